"""Ship a staged training run as the package's default model, with its recipe (run by hand).

Usage::

    python benchmarks/ship_default.py --stages runs/default_stage1 runs/default runs/default_stage3 \\
        [--benchmark generalisation.json] [--finetune finetune.json] [--set KEY=JSON ...]

Reads each stage's ``config.yaml`` and ``metrics.jsonl`` (written by ``fastmetro train``), the
data folders' ``synth.json`` manifests and the JSON of ``benchmarks/generalisation.py``, and writes
``default.safetensors`` (float16), ``default.json`` and ``default_recipe.json`` through
:func:`fastmetro.weights.ship_checkpoint`. The recipe holds what is needed to make the model again:
the data and training commands, every stage's resolved config (paths made relative to the working
folder, as the commands write them), the seed, the commit, the evaluations during training and
the benchmark figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

DATA_COMMANDS = {
    "stage 1 data": "fastmetro synth --out data/synth_studio --num 10000 --size 128 --seed 5 --workers 2 "
                    "--test-fraction 0.03 --backgrounds studio --no-occluders --generator-version 1 "
                    "--vertices-dtype float16",
    "stage 2 data": "fastmetro synth --out data/synth_default --num 30000 --size 128 --seed 0 --workers 2 "
                    "--vertices-dtype float16 --test-fraction 0.02 --preview",
    "generalisation set": "fastmetro synth --split generalisation --out data/synth_general --num 400 --size 128 "
                          "--seed 0 --workers 2 --vertices-dtype float16 --preview",
    "stage 1": "OMP_WAIT_POLICY=PASSIVE fastmetro train default_stage1",
    "stage 2": "OMP_WAIT_POLICY=PASSIVE fastmetro train default",
    "stage 3": "OMP_WAIT_POLICY=PASSIVE fastmetro train default_stage3",
    "benchmark": "python benchmarks/generalisation.py default --test data/synth_default/test.yaml "
                 "--generalisation data/synth_general/test.yaml",
}


# Each stage in order: its data folder, its output folder (as the packaged configs name them) and
# the weights it starts from (the previous stage's last checkpoint).
STAGES = (
    ("data/synth_studio", "runs/default_stage1", None),
    ("data/synth_default", "runs/default", "runs/default_stage1/last.safetensors"),
    ("data/synth_default", "runs/default_stage3", "runs/default/last.safetensors"),
)


def _portable(config: dict, data: str, output_dir: str, checkpoint: str | None) -> dict:
    """The run's config with the paths the recipe's commands use (relative to the working folder)."""
    config["data"]["train"] = f"{data}/train.yaml"
    config["data"]["val"] = f"{data}/test.yaml"
    config["train"]["output_dir"] = output_dir
    config["model"]["checkpoint"] = checkpoint
    return config


def _stage(run: Path, data: str, output_dir: str, checkpoint: str | None) -> dict:
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    evaluations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"config": _portable(config, data, output_dir, checkpoint), "evaluations": evaluations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=Path, nargs="+", required=True,
                        help="the training folders, stage 1 first (the last one's last weights ship)")
    parser.add_argument("--benchmark", type=Path, help="benchmarks/generalisation.py --json output (of the shipped file)")
    parser.add_argument("--finetune", type=Path, help="JSON of the fine-tune comparison (README), if measured")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="where the synth_* folders are")
    parser.add_argument("--folder", type=Path, default=Path("src/fastmetro/weights"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="another recipe entry, e.g. stage1_wall_minutes=12.6 or training_commit='\"abc\"'")
    args = parser.parse_args()
    if len(args.stages) > len(STAGES):
        parser.error(f"at most {len(STAGES)} stages are known to the recipe")

    from fastmetro.weights import ship_checkpoint

    stages = {f"stage{index + 1}": _stage(run, *STAGES[index]) for index, run in enumerate(args.stages)}
    config = stages[f"stage{len(stages)}"]["config"]
    manifests = {name: json.loads((args.data_root / name / "synth.json").read_text())
                 for name in ("synth_studio", "synth_default", "synth_general")}
    recipe = {
        "model": config["model"]["name"],
        "flavor": config["model"].get("flavor"),
        "overrides": config["model"]["overrides"],
        "image_size": config["data"]["image_size"],
        "topology": config["model"]["topology"],
        "seed": config["train"]["seed"],
        "commands": {key: command for key, command in DATA_COMMANDS.items()
                     if not key.startswith("stage ") or int(key.split()[1]) <= len(stages)},
        "data": manifests,
        **stages,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    if args.benchmark:
        recipe["benchmark"] = json.loads(args.benchmark.read_text()).get("sets")
    for item in args.set:
        key, _, value = item.partition("=")
        recipe[key] = json.loads(value)
    if args.finetune:
        recipe["finetune"] = json.loads(args.finetune.read_text())
    shipped = ship_checkpoint(args.stages[-1] / "last.safetensors", args.folder, recipe)
    print(shipped.path, shipped.recipe["size_bytes"], shipped.recipe["sha256"])


if __name__ == "__main__":
    main()
