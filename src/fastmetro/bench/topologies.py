"""Data-free topologies for benchmarks: the built-in body (SMPL) and hand (MANO) sizes with the
sparsity of the real matrices, so timings are representative without any licensed file.

Upsampling matrices get 3 non-zeros per row (GraphCMR's SMPL and MANO matrices have exactly 3),
the coarse mesh a random symmetric adjacency with 3-16 neighbours per vertex, 8 on average (SMPL's
431-vertex mesh has 4-11 including itself), the joint regressor a dense positive matrix. The
values are random: these topologies are for timing, never for meaningful meshes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from fastmetro.model.presets import sized_topology


def synthetic_topology(task: str = "body", seed: int = 0):
    """A :class:`~fastmetro.topology.Topology` with ``task``'s sizes ("body": 6890/1723/431 and
    14 joints; "hand": 778/195 and 21 joints) and realistic sparsity."""
    base = sized_topology(task)
    rng = np.random.default_rng(seed)
    counts = base.level_vertex_counts

    def upsampling(rows: int, cols: int) -> sp.csr_matrix:
        indices = rng.integers(0, cols, size=(rows, 3))
        values = np.full(rows * 3, 1.0 / 3.0)
        return sp.csr_matrix((values, (np.repeat(np.arange(rows), 3), indices.ravel())), shape=(rows, cols))

    coarse = counts[-1]
    neighbours = rng.integers(0, coarse, size=(coarse, 4))
    adjacency = sp.csr_matrix(
        (np.ones(coarse * 4), (np.repeat(np.arange(coarse), 4), neighbours.ravel())), shape=(coarse, coarse)
    )
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    num_joints = base.num_joints
    return replace(
        base,
        name=f"{task}-synthetic",
        upsample=tuple(upsampling(counts[level], counts[level + 1]) for level in range(len(counts) - 1)),
        coarse_adjacency=adjacency,
        joint_regressor=rng.random((num_joints, counts[0])) / counts[0],
        root_regressor=np.full(counts[0], 1.0 / counts[0]),
    )
