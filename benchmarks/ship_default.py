"""Ship a staged training run as the package's default model, with its recipe (run by hand).

Usage::

    python benchmarks/ship_default.py --stages runs/default_stage1 runs/default runs/default_stage3 \\
        runs/default_stage4 runs/default_stage5 runs/default_stage6 runs/default_stage7 \\
        [--benchmark generalisation.json] [--finetune finetune.json] [--set KEY=JSON ...]

Reads each stage's ``config.yaml`` and ``metrics.jsonl`` (written by ``fastmetro train``), the
data folders' ``synth.json`` manifests and the JSON of ``benchmarks/generalisation.py``, and writes
``default.safetensors`` (float16), ``default.json`` and ``default_recipe.json`` through
:func:`fastmetro.engine.ship.ship_checkpoint`. The recipe holds what is needed to make the model again:
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
    "benchmark": "python benchmarks/generalisation.py default --test data/synth_default/test.yaml "
    "--generalisation data/synth_general/test.yaml",
}


# The packaged config of each stage, in order. Each config names the stage's data, its output
# folder and the weights it starts from (the previous stage's last checkpoint), and the recipe
# records those paths, as the commands write them, in place of the folders the run really used.
STAGE_CONFIGS = (
    "default_stage1",
    "default",
    "default_stage3",
    "default_stage4",
    "default_stage5",
    "default_stage6",
    "default_stage7",
)


def _stage(run: Path, name: str) -> dict:
    import yaml

    from fastmetro.engine.config import config_path

    packaged = yaml.safe_load(config_path(name).read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["train"], config["data"]["val"] = packaged["data"]["train"], packaged["data"]["val"]
    config["train"]["output_dir"] = packaged["train"]["output_dir"]
    config["model"]["checkpoint"] = packaged["model"].get("checkpoint")
    evaluations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"config": config, "evaluations": evaluations}


def _as_commands_path(path: Path, data_root: Path) -> str:
    """``path`` under ``data_root`` as the recipe's commands name it (``data/...``); else unchanged."""
    try:
        return str(Path("data") / path.resolve().relative_to(data_root.resolve()))
    except ValueError:
        return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stages",
        type=Path,
        nargs="+",
        required=True,
        help="the training folders, stage 1 first (the last one's last weights ship)",
    )
    parser.add_argument(
        "--benchmark", type=Path, help="benchmarks/generalisation.py --json output (of the shipped file)"
    )
    parser.add_argument("--finetune", type=Path, help="JSON of the fine-tune comparison (README), if measured")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="where the synth_* folders are")
    parser.add_argument("--folder", type=Path, default=Path("src/fastmetro/weights"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="another recipe entry, e.g. stage1_wall_minutes=12.6 or training_commit='\"abc\"'",
    )
    args = parser.parse_args()
    if len(args.stages) > len(STAGE_CONFIGS):
        parser.error(f"at most {len(STAGE_CONFIGS)} stages are known to the recipe")

    from fastmetro.engine.ship import ship_checkpoint

    stages = {f"stage{index + 1}": _stage(run, STAGE_CONFIGS[index]) for index, run in enumerate(args.stages)}
    config = stages[f"stage{len(stages)}"]["config"]
    manifests = {
        name: json.loads((args.data_root / name / "synth.json").read_text())
        for name in ("synth_studio", "synth_default", "synth_general")
    }
    recipe = {
        "model": config["model"]["name"],
        "flavor": config["model"].get("flavor"),
        "overrides": config["model"]["overrides"],
        "image_size": config["data"]["image_size"],
        "topology": config["model"]["topology"],
        "seed": config["train"]["seed"],
        "commands": {
            **DATA_COMMANDS,
            **{
                f"stage {index + 1}": f"OMP_WAIT_POLICY=PASSIVE fastmetro train {name}"
                for index, name in enumerate(STAGE_CONFIGS[: len(stages)])
            },
        },
        "data": manifests,
        **stages,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    if args.benchmark:
        recipe["benchmark"] = json.loads(args.benchmark.read_text()).get("sets")
        for measured in recipe["benchmark"].values():  # this machine's data folders -> the commands' data/
            measured["data"] = _as_commands_path(Path(measured["data"]), args.data_root)
    for item in args.set:
        key, _, value = item.partition("=")
        recipe[key] = json.loads(value)
    if args.finetune:
        recipe["finetune"] = json.loads(args.finetune.read_text())
    shipped = ship_checkpoint(args.stages[-1] / "last.safetensors", args.folder, recipe)
    print(shipped.path, shipped.recipe["size_bytes"], shipped.recipe["sha256"])


if __name__ == "__main__":
    main()
