"""Ship a staged training run as the package's default model, with its recipe (run by hand).

Usage (model v2)::

    python benchmarks/ship_default.py --stages runs/default_v2 runs/default_v2_stage2 \\
        [--benchmark default_v2.json] [--set KEY=JSON ...]
    # stage 1 as the shipped recipe records it (its run folder gone), stage 2 from its folder:
    python benchmarks/ship_default.py --stages-from-recipe 1 --stages runs/default_v2_stage2 ...
    python benchmarks/ship_default.py --stages-from-recipe 2 --stages runs/default_v2_stage3 ...
    python benchmarks/ship_default.py --stages-from-recipe 3 --stages runs/default_v2_stage4 ...

Reads each stage's ``config.yaml`` and ``metrics.jsonl`` (written by ``fastmetro train``), the
data folder's ``synth.json`` manifest and the JSON of ``benchmarks/default_v2.py``, and writes
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

# Each stage's data folder under --data-root (stage 3 went over stage 2's images again).
DATA_FOLDERS = ("synth_v2", "synth_v2_stage2", "synth_v2_stage2", "synth_v2_stage4")
DATA_COMMANDS = {
    "stage 1 data": "fastmetro synth --out data/synth_v2 --num 24000 --size 256 --seed 0 --workers 2 "
    "--vertices-dtype float16 --test-fraction 0.02",
    "stage 2 data": "fastmetro synth --out data/synth_v2_stage2 --num 20000 --size 256 --seed 7 --workers 2 "
    "--vertices-dtype float16 --test-fraction 0.02",
    "stage 4 data": "fastmetro synth --out data/synth_v2_stage4 --num 20000 --size 256 --seed 11 --workers 2 "
    "--vertices-dtype float16 --test-fraction 0.02",
    "assets": "fastmetro assets fetch   # the BlazePose encoder (make does it)",
    "benchmark": "python benchmarks/default_v2.py --models default=default --photos --json default_v2.json",
}


# The packaged config of each stage, in order. Each config names the stage's data, its output
# folder and the weights it starts from (the previous stage's last checkpoint), and the recipe
# records those paths, as the commands write them, in place of the folders the run really used.
STAGE_CONFIGS = ("default_v2", "default_v2_stage2", "default_v2_stage3", "default_v2_stage4")
STAGE_DATA = ("stage 1 data", "stage 2 data", "stage 2 data", "stage 4 data")  # each stage's DATA_COMMANDS


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
        "--stages-from-recipe",
        type=int,
        default=0,
        metavar="N",
        help="take the first N stages (configs, evaluations, data manifests) from the shipped recipe",
    )
    parser.add_argument("--benchmark", type=Path, help="benchmarks/default_v2.py --json output (of the shipped file)")
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
    kept = args.stages_from_recipe
    if kept + len(args.stages) > len(STAGE_CONFIGS):
        parser.error(f"at most {len(STAGE_CONFIGS)} stages are known to the recipe")

    from fastmetro.engine.ship import ship_checkpoint

    previous = json.loads((args.folder / "default_recipe.json").read_text()) if kept else {}
    stages = {f"stage{index + 1}": previous[f"stage{index + 1}"] for index in range(kept)}
    manifests = {name: previous["data"][name] for name in DATA_FOLDERS[:kept]}
    for index, run in enumerate(args.stages, start=kept):
        stages[f"stage{index + 1}"] = _stage(run, STAGE_CONFIGS[index])
        manifest = args.data_root / DATA_FOLDERS[index] / "synth.json"
        manifests[DATA_FOLDERS[index]] = json.loads(manifest.read_text())
    config = stages[f"stage{len(stages)}"]["config"]
    recipe = {
        "model": config["model"]["name"],
        "flavor": config["model"].get("flavor"),
        "overrides": config["model"]["overrides"],
        "image_size": config["data"]["image_size"],
        "topology": config["model"]["topology"],
        "seed": config["train"]["seed"],
        "commands": {
            **{key: command for key, command in DATA_COMMANDS.items() if key not in STAGE_DATA[len(stages) :]},
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
        recipe["benchmark"] = json.loads(args.benchmark.read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        recipe[key] = json.loads(value)
    shipped = ship_checkpoint(args.stages[-1] / "last.safetensors", args.folder, recipe)
    print(shipped.path, shipped.recipe["size_bytes"], shipped.recipe["sha256"])


if __name__ == "__main__":
    main()
