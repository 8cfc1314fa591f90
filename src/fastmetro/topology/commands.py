"""``fastmetro topology build`` / ``fastmetro topology info``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""
    parser = subparsers.add_parser("topology", help="build or inspect mesh topologies")
    commands = parser.add_subparsers(dest="topology_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    build = commands.add_parser("build", help="build a topology .npz from a mesh or a built-in preset")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--mesh", type=Path, help="triangle mesh (.obj/.ply/...), read with trimesh")
    source.add_argument("--preset", choices=("anny", "smpl", "mano"), help="a built-in topology")
    build.add_argument("--sizes", type=int, nargs="+", default=[1723, 431], help="coarse level vertex counts")
    build.add_argument("--joint-regressor", type=Path, help="(K, V) .npy joint regressor for --mesh (optional)")
    build.add_argument("--joint-names", nargs="+", help="K joint names (with --joint-regressor)")
    build.add_argument(
        "--kind",
        choices=("body", "hand"),
        default="body",
        help="what the mesh is (decides the released augmentation/loss recipe; body)",
    )
    build.add_argument("--name", default=None, help="topology name (default: the mesh file stem)")
    build.add_argument("--data-dir", type=Path, help="directory with the SMPL/MANO files (smpl, mano presets)")
    build.add_argument("--mano-model", type=Path, help="MANO_RIGHT.pkl/.npz for MANO's real joint regressor")
    build.add_argument("--out", type=Path, required=True, help="output .npz")
    build.set_defaults(func=run_build)

    info = commands.add_parser("info", help="print levels, joints and sampling quality of a topology")
    info.add_argument("topology", help="topology .npz, or a built-in name (anny, smpl, mano)")
    info.add_argument("--mesh", type=Path, help="mesh whose vertices measure the sampling quality")
    info.add_argument("--data-dir", type=Path, help="directory with the SMPL/MANO files (built-in names)")
    info.set_defaults(func=run_info)


def run_build(args) -> int:
    from fastmetro import topology as topology_module
    from fastmetro.topology.build import build_topology, read_mesh

    started = time.perf_counter()
    if args.preset:
        kwargs = {}
        if args.preset == "mano" and args.mano_model:
            kwargs["mano_model"] = args.mano_model
        topology = topology_module.load(args.preset, args.data_dir, **kwargs)
    else:
        vertices, faces = read_mesh(args.mesh)
        regressor = None
        if args.joint_regressor:
            from fastmetro.io import load_npy

            regressor = load_npy(args.joint_regressor, what="joint regressor")
        topology = build_topology(
            vertices, faces, tuple(args.sizes), joint_regressor=regressor,
            joint_names=tuple(args.joint_names) if args.joint_names else None,
            name=args.name or args.mesh.stem, kind=args.kind,
        )  # fmt: skip
    topology.save(args.out)
    print(f"wrote {args.out}: {topology!r} in {time.perf_counter() - started:.1f} s")
    return 0


def quality_rows(topology, vertices: np.ndarray) -> list[tuple[int, int, float, float]]:
    """(level, vertex count, mean mm, max mm) of down-then-up sampling ``vertices`` (metres)."""
    from fastmetro.topology.sampling import reconstruction_error

    rows = []
    for level in range(1, topology.num_levels):
        mean, worst = reconstruction_error(vertices, topology.kept_indices, topology.upsample, level)
        rows.append((level, topology.level_vertex_counts[level], mean * 1000, worst * 1000))
    return rows


def run_info(args) -> int:
    from fastmetro import topology as topology_module
    from fastmetro.errors import FastMetroError
    from fastmetro.topology.build import read_mesh

    topology = topology_module.load(args.topology, args.data_dir)
    print(f"topology   {topology.name}")
    print("levels     " + " -> ".join(str(n) for n in topology.level_vertex_counts) + " vertices")
    for level, faces in enumerate(topology.faces):
        print(f"  level {level}: {topology.level_vertex_counts[level]} vertices, {len(faces)} faces")
    print(f"coarse adjacency: {topology.coarse_adjacency.nnz // 2} edges")
    print(f"joints     {topology.num_joints}: {', '.join(topology.joint_names) or '(none)'}")
    flip = "yes" if topology.vertex_flip is not None else "no"
    print(f"root       joints {list(topology.root_joints)}; vertex flip: {flip}")
    if args.mesh:
        vertices, _ = read_mesh(args.mesh)
        if len(vertices) != topology.num_vertices:
            raise FastMetroError(f"{args.mesh}: has {len(vertices)} vertices, the topology {topology.num_vertices}")
        source = str(args.mesh)
    elif topology.template is not None:
        vertices, source = topology.template, "template"
    else:
        vertices = None
    if vertices is not None:
        print(f"sampling quality on {source} (down to the level, then up to level 0):")
        print("  level  vertices   mean mm    max mm")
        for level, count, mean, worst in quality_rows(topology, vertices):
            print(f"  {level:>5}  {count:>8}  {mean:>8.3f}  {worst:>8.3f}")
    for key in ("regressor_test_mean_error_mm", "build_seconds"):
        if key in topology.metadata:
            print(f"{key}: {topology.metadata[key]:.2f}")
    return 0
