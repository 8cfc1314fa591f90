"""A checkpoint against the mean-mesh baseline, on the training distribution and on the generalisation set.

Usage::

    python benchmarks/generalisation.py CHECKPOINT --test DATA/test.yaml --generalisation GEN/test.yaml \\
        [--train DATA/train.yaml] [--json out.json] [--markdown out.md] [--max-samples N]

``--test`` is the held-out split of the training distribution (``fastmetro synth --split train``,
the last ``--test-fraction`` of it), ``--generalisation`` a set made with ``fastmetro synth
--split generalisation`` (photos, textures, clothing patterns, a pose family and lenses that
the training set never has). The baseline predicts the mean root-centred mesh of ``--train``
(default: the ``train.yaml`` beside ``--test``) for every image, computed by the demo's code
(:func:`fastmetro.engine.demo.mean_mesh` / :func:`~fastmetro.engine.demo.baseline_metrics`); the
model is evaluated by :func:`fastmetro.engine.evaluate_checkpoint.evaluate_checkpoint`. Prints one
table (MPJPE, PA-MPJPE, MPVPE, PA-MPVPE in mm: model, baseline, model / baseline) per set.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

METRICS = (("mpjpe", "MPJPE"), ("pa_mpjpe", "PA-MPJPE"), ("mpvpe", "MPVPE"), ("pa_mpvpe", "PA-MPVPE"))


def run(args: argparse.Namespace) -> dict:
    import torch

    from fastmetro import topology as topology_module
    from fastmetro.engine.demo import baseline_metrics, mean_mesh
    from fastmetro.engine.evaluate_checkpoint import evaluate_checkpoint
    from fastmetro.errors import FastMetroError
    from fastmetro.model.checkpoint import read_spec
    from fastmetro.weights import resolve_checkpoint

    sets = {"held-out (training distribution)": args.test, "generalisation": args.generalisation}
    args.checkpoint = resolve_checkpoint(args.checkpoint)  # "default": the shipped model
    for path in [args.checkpoint, *sets.values()]:
        if not Path(path).is_file():
            raise FastMetroError(f"{path}: no such file")
    train_yaml = args.train or args.test.parent / "train.yaml"
    if not train_yaml.is_file():
        raise FastMetroError(f"{train_yaml}: no training set for the mean mesh (pass --train)")
    spec = read_spec(args.checkpoint)
    mesh = topology_module.load(args.topology or (spec.topology.name if spec is not None else "anny"))
    torch.manual_seed(0)
    mean_vertices = mean_mesh(train_yaml, mesh, args.workers)
    results = {"checkpoint": str(args.checkpoint), "train": str(train_yaml), "sets": {}}
    for name, yaml_path in sets.items():
        model = evaluate_checkpoint(args.checkpoint, yaml_path, eval_overrides(args), progress=False)
        baseline = baseline_metrics(_limited(yaml_path, args.max_samples), mesh, mean_vertices, args.workers)
        results["sets"][name] = {
            "data": str(yaml_path),
            "model": {key: float(model[key]) for key, _ in METRICS if key in model},
            "baseline": {key: float(baseline[key]) for key, _ in METRICS if key in baseline},
        }
    return results


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """``fastmetro eval``'s config overrides for these options (model and input size: the checkpoint's)."""
    overrides = [
        f"data.val_batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"train.device={args.device}",
    ]
    if args.max_samples:
        overrides.append(f"data.max_val_samples={args.max_samples}")
    if args.topology is not None:
        overrides.append(f"model.topology={args.topology}")
    return overrides


def _limited(yaml_path: Path, max_samples: int | None):
    """``baseline_metrics`` takes a yaml; with ``--max-samples`` the first rows go through a small copy."""
    if not max_samples:
        return yaml_path
    import tempfile

    from fastmetro.data.tsv import TSVDataset, TSVDatasetWriter

    rows = TSVDataset(yaml_path)
    folder = Path(tempfile.mkdtemp(prefix="generalisation_subset_"))
    with TSVDatasetWriter(folder, "subset", image_format="jpg", jpeg_quality=95) as writer:
        for index in range(min(max_samples, len(rows))):
            row = rows[index]
            writer.add(row.key, row.image, row.label, vertices=row.vertices)
    return writer.yaml_path


def table(results: dict) -> str:
    """The results as a markdown table."""
    lines = [
        "| set | metric (mm) | model | mean-mesh baseline | model / baseline |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, values in results["sets"].items():
        for key, label in METRICS:
            if key in values["model"] and key in values["baseline"]:
                model, baseline = values["model"][key], values["baseline"][key]
                lines.append(f"| {name} | {label} | {model:.1f} | {baseline:.1f} | {model / baseline:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help='our .safetensors, or "default" (the shipped model)')
    parser.add_argument("--test", type=Path, required=True, help="held-out split of the training distribution")
    parser.add_argument("--generalisation", type=Path, required=True, help="fastmetro synth --split generalisation")
    parser.add_argument(
        "--train", type=Path, default=None, help="training set for the mean mesh (default: beside --test)"
    )
    parser.add_argument("--topology", default=None, help="default: the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N rows of each set")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from fastmetro.errors import FastMetroError
    from fastmetro.io import atomic_write

    try:
        results = run(args)
    except FastMetroError as error:
        print(f"error: {error}")
        return 2
    text = table(results)
    print(text)
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    if args.markdown:
        with atomic_write(args.markdown, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
