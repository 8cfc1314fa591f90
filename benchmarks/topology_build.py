"""Time and quality of mesh sampling: ours vs GraphCMR's released SMPL matrices, and Anny.

    python benchmarks/topology_build.py [--smpl-dir ../shared/data/smpl] [--no-anny]

Prints one row per mesh and level: vertices, build seconds (wall and CPU), and the mean / max
distance (mm) between the mesh and its down-then-up-sampled copy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    from fastmetro.io import load_npz_restricted
    from fastmetro.topology.graphcmr import _mesh_classes
    from fastmetro.topology.sampling import reconstruction_error, sample_mesh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smpl-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/smpl")
    parser.add_argument("--no-anny", action="store_true")
    args = parser.parse_args()

    rows = []
    arrays = load_npz_restricted(args.smpl_dir / "mesh_downsampling.npz", _mesh_classes(), keys=["M", "F", "D", "U"])
    template = np.asarray(arrays["M"][0].v, dtype=np.float64)
    faces = np.asarray(arrays["F"][0], dtype=np.int64)
    levels, wall, cpu = _timed(sample_mesh, template, faces, (1723, 431))
    for level in (1, 2):
        coarse = template
        for step in range(level):
            coarse = arrays["D"][step] @ coarse
        for step in range(level - 1, -1, -1):
            coarse = arrays["U"][step] @ coarse
        distance = np.linalg.norm(coarse - template, axis=1) * 1000
        rows.append(("SMPL, GraphCMR D/U", levels.vertex_counts[level], None, None, distance.mean(), distance.max()))
        mean, worst = reconstruction_error(template, levels.kept_indices, levels.upsample, level)
        rows.append(("SMPL, ours", levels.vertex_counts[level], wall, cpu, mean * 1000, worst * 1000))

    if not args.no_anny:
        from fastmetro.topology.anny import AnnyBuildConfig, build_anny_topology

        topology, wall, cpu = _timed(build_anny_topology, AnnyBuildConfig())
        for level in (1, 2):
            mean, worst = reconstruction_error(topology.template, topology.kept_indices, topology.upsample, level)
            rows.append(
                ("Anny, ours (whole build)", topology.level_vertex_counts[level], wall, cpu, mean * 1000, worst * 1000)
            )
        print(
            f"Anny sampling alone: {topology.metadata['sampling_seconds']:.1f} s wall; joint regressor "
            f"held-out error {topology.metadata['regressor_test_mean_error_mm']:.2f} mm"
        )

    print(f"{'mesh':<26} {'vertices':>8} {'wall s':>8} {'cpu s':>8} {'mean mm':>8} {'max mm':>8}")
    for name, count, wall, cpu, mean, worst in rows:
        timing = f"{wall:>8.1f} {cpu:>8.1f}" if wall is not None else f"{'-':>8} {'-':>8}"
        print(f"{name:<26} {count:>8} {timing} {mean:>8.3f} {worst:>8.3f}")


if __name__ == "__main__":
    main()
