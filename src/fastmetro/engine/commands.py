"""Sub-commands of this area: ``fastmetro train``, ``fastmetro eval``, ``fastmetro demo``."""

from __future__ import annotations

import json
import logging

from fastmetro.engine.config import config_path


def _train(args) -> int:
    from fastmetro.engine.config import load_config
    from fastmetro.engine.evaluate import format_metrics
    from fastmetro.engine.train import train

    overrides = list(args.overrides)
    if args.skip_bad_rows:
        overrides.append("data.skip_bad_rows=true")
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    config = load_config(config_path(args.config), overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train(config, resume=args.resume)
    if result.last_metrics:
        print(f"step {result.step}: {format_metrics(result.last_metrics)}")
    print(
        f"done: {result.step} steps, {result.images_per_second:.1f} images/s; "
        f"weights in {config.train.output_dir}/last.safetensors"
    )
    return 0


def _eval(args) -> int:
    from fastmetro.engine.evaluate import format_metrics
    from fastmetro.engine.evaluate_checkpoint import evaluate_checkpoint

    values = evaluate_checkpoint(args.checkpoint, args.data, args.overrides, progress=not args.json or args.progress)
    if args.json:
        print(json.dumps(values))
    else:
        print(format_metrics(values))
    return 0


def _demo(args) -> int:
    from fastmetro.engine.demo import run_demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the periodic evaluations
    return run_demo(args)


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""
    train = subparsers.add_parser(
        "train",
        help="train a model (single process, or under torchrun for DDP)",
        description="Train FastMETRO. CONFIG is a YAML file (see configs/); any key can be overridden as "
        "section.key=value, e.g. optim.lr=2e-4 data.batch_size=32. For several GPUs/nodes run "
        "the same command under `torchrun --nproc_per_node N -m fastmetro train ...`.",
    )
    train.add_argument("config", help="YAML config file, or the name of a packaged config (e.g. demo)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (nested keys with dots)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.* exactly")
    train.add_argument("--skip-bad-rows", action="store_true", help="skip unreadable dataset rows (logged)")
    train.add_argument("--output-dir", help="same as train.output_dir=...")
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: MPJPE / PA-MPJPE / MPVPE (mm)",
        description="Evaluate a checkpoint on a dataset. The model, topology and input size come from the "
        "checkpoint; data options from the training config saved beside it, then KEY=VALUE "
        "overrides of that config, e.g. data.num_workers=0 data.val_batch_size=32 "
        "data.max_val_samples=500 data.body_model=SMPL_NEUTRAL.pkl model.topology=smpl "
        "model.data_dir=DIR model.name=FastMETRO-L-H64 train.device=cuda train.hand_metrics=true.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="our .safetensors or an official *_state_dict.bin")
    evaluate.add_argument("--data", required=True, help="dataset yaml (METRO TSV format)")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training-config overrides")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--progress", action="store_true", help="show the progress bar even with --json")
    evaluate.set_defaults(func=_eval)

    demo = subparsers.add_parser("demo", help="run the whole pipeline on the free default (Anny) on CPU")
    demo.add_argument("--out", default="demo_output", help="folder for the data, run, meshes and report")
    demo.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    demo.set_defaults(func=_demo)
