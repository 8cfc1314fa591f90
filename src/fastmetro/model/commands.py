"""`fastmetro models` (preset table with parameter counts) and `fastmetro convert` (official checkpoints)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""
    models = subparsers.add_parser(
        "models",
        help="list model presets with backbone / transformer / total parameter counts",
        description="List every preset (both flavors, body and hand) and the Table 4 ablations of "
        "FastMETRO-S-R50, with parameter counts. Counts need no data files: the models are built "
        "on the meta device with the built-in mesh sizes (SMPL 6890/1723/431, 14 joints; "
        "MANO 778/195, 21 joints). METRO-<backbone> rows are the METRO-style baseline.",
    )
    models.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    models.add_argument("--flavor", choices=("paper", "release"), help="only this flavor")
    models.add_argument("--task", choices=("body", "hand"), help="only this task")
    models.add_argument("--no-ablations", action="store_true", help="omit the Table 4 ablation rows")
    models.set_defaults(func=_models)

    convert = subparsers.add_parser(
        "convert",
        help="convert an official FastMETRO *_state_dict.bin into safetensors + JSON",
        description="Read an official checkpoint with torch.load(weights_only=True), map its names "
        "onto ours, check every key and shape strictly, and write OUT.safetensors and OUT.json.",
    )
    convert.add_argument("input", help="official *_state_dict.bin")
    convert.add_argument("output", help="output .safetensors (the .json is written beside it)")
    convert.add_argument("--model", help="preset name, e.g. FastMETRO-L-H64 (default: read from the weights)")
    convert.add_argument("--hand", action="store_true", help="a hand (MANO) model, e.g. the FreiHAND checkpoint")
    convert.add_argument(
        "--flavor", choices=("paper", "release"), help="default: inferred from the layer names (released: release)"
    )
    convert.set_defaults(func=_convert)


def model_rows(
    flavors=("paper", "release"), tasks=("body", "hand"), ablations: bool = True, metro: bool = True
) -> list[dict]:
    """One dict per (preset, flavor, task): name, flavor, task and the three counts; then the
    METRO-style baselines (flavor "-")."""
    from fastmetro.model.presets import ABLATIONS, count_parameters, preset_names

    rows = []
    for name in preset_names():
        for flavor in flavors:
            for task in tasks:
                rows.append({"name": name, "flavor": flavor, "task": task, **count_parameters(name, flavor, task)})
    if ablations and "paper" in flavors and "body" in tasks:
        for ablation in ABLATIONS:
            name = f"FastMETRO-S-R50+{ablation}"
            rows.append({"name": name, "flavor": "paper", "task": "body", **count_parameters(name, "paper", "body")})
    if "release" in flavors and "body" in tasks:  # the released *_smpl_h36m / *_smpl_3dpw checkpoints
        counts = count_parameters("FastMETRO-L-H64", "release", "body", smpl_parameter_regressor=True)
        rows.append({"name": "FastMETRO-L-H64+smpl-regressor", "flavor": "release", "task": "body", **counts})
    if metro:  # the METRO-style baseline (no flavors)
        from fastmetro.model.metro import metro_preset_names

        for name in metro_preset_names():
            for task in tasks:
                rows.append({"name": name, "flavor": "-", "task": task, **count_parameters(name, "paper", task)})
    return rows


def _models(args) -> int:
    flavors = (args.flavor,) if args.flavor else ("paper", "release")
    tasks = (args.task,) if args.task else ("body", "hand")
    rows = model_rows(flavors, tasks, ablations=not args.no_ablations, metro=not args.flavor)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "flavor", "task", "backbone", "transformer", "total")
    table = [header] + [
        (r["name"], r["flavor"], r["task"], f"{r['backbone_params']:,}", f"{r['transformer_params']:,}",
         f"{r['total_params']:,}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for index, row in enumerate(table):
        cells = [cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _convert(args) -> int:
    from fastmetro.model.checkpoint import convert_official

    spec = convert_official(args.input, args.output, args.model, hand=args.hand, flavor=args.flavor)
    extra = " with the SMPL parameter regressor" if spec.overrides.get("smpl_parameter_regressor") else ""
    print(f"wrote {args.output} and its .json: {spec.name}{extra} ({spec.flavor} flavor, {spec.task})")
    return 0
