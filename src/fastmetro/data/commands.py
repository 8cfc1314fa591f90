"""``fastmetro data check`` and ``fastmetro data convert`` (see fastmetro.cli)."""

from __future__ import annotations

import sys


def _check(args) -> int:
    from fastmetro.data.check import check_dataset

    num_joints = num_vertices = None
    if args.topology:
        from fastmetro import topology as topologies

        mesh = topologies.load(args.topology, args.data_dir)
        num_joints, num_vertices = mesh.num_joints, mesh.num_vertices
    report = check_dataset(
        args.yaml, num_joints=num_joints, num_vertices=num_vertices, progress=not args.quiet and sys.stderr.isatty()
    )
    print(report.summary(max_keys=args.max_keys))
    return 0 if report.ok else 1


def _convert(args) -> int:
    from fastmetro.data.convert import convert

    yaml_path = convert(
        args.images,
        args.annotations,
        args.out,
        name=args.name,
        image_format=args.image_format,
        bbox_scale=args.bbox_scale,
        progress=sys.stderr.isatty(),
    )
    print(f"wrote {yaml_path}")
    return 0


def register(subparsers) -> None:
    """Add ``data check`` / ``data convert`` to the `fastmetro` parser."""
    data = subparsers.add_parser("data", help="check or convert METRO-format (TSV) datasets")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    check = actions.add_parser("check", help="validate every row of a dataset yaml; exit 1 if any row is bad")
    check.add_argument("yaml", help="dataset yaml (composite or not)")
    check.add_argument(
        "--topology", help="also check joint/vertex counts against this topology (smpl, mano, anny, .npz)"
    )
    check.add_argument("--data-dir", help="folder with the SMPL/MANO topology files (for --topology smpl/mano)")
    check.add_argument("--max-keys", type=int, default=20, help="bad row keys to list (default 20)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)

    conv = actions.add_parser("convert", help="images + JSON/NPZ annotations -> METRO TSV shard (schema: README)")
    conv.add_argument("--images", required=True, help="folder holding the images")
    conv.add_argument("--annotations", required=True, help="ANN.json or ANN.npz (schema: fastmetro.data.convert)")
    conv.add_argument("--out", required=True, help="output folder")
    conv.add_argument("--name", default="train", help="shard name: NAME.yaml, NAME.img.tsv, ... (default train)")
    conv.add_argument(
        "--image-format",
        choices=("keep", "jpg", "png"),
        default="keep",
        help="keep JPEG/PNG bytes as they are (default) or re-encode",
    )
    conv.add_argument(
        "--bbox-scale",
        type=float,
        default=1.2,
        help="scale = BBOX_SCALE * max(w, h) / 200 for records given as bbox (default 1.2)",
    )
    conv.set_defaults(func=_convert)
