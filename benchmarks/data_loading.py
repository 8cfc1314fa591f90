"""Training-sample throughput of MeshDataset (TSV read + JPEG decode + augmentation + crop).

Writes a temporary METRO shard of 640x480 JPEG photographs-sized images with SMPL-sized vertex
labels, then times ``MeshDataset`` samples per second with 0 and 2 DataLoader workers.

    python benchmarks/data_loading.py [--num 256] [--size 224] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from fastmetro.data.augment import AugmentConfig
from fastmetro.data.dataset import MeshDataset
from fastmetro.data.loader import create_loader
from fastmetro.data.tsv import TSVDatasetWriter
from fastmetro.topology import Topology, adjacency_from_faces

NUM_VERTICES = 6890


def _topology() -> Topology:
    """SMPL-sized stand-in (no licensed files needed): 6890 vertices, 14 joints, identity flips."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, NUM_VERTICES, (100, 3))
    kept = np.arange(0, NUM_VERTICES, 16)
    return Topology(
        name="bench",
        level_vertex_counts=(NUM_VERTICES, len(kept)),
        faces=(faces, np.array([[0, 1, 2]])),
        kept_indices=(kept,),
        upsample=(sp.csr_matrix(np.eye(NUM_VERTICES, dtype=np.float32)[:, kept]),),
        coarse_adjacency=adjacency_from_faces(np.array([[0, 1, 2]]), len(kept)),
        joint_regressor=np.full((14, NUM_VERTICES), 1 / NUM_VERTICES),
        joint_names=tuple(map(str, range(14))),
        joint_flip=(5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13),
        root_joints=(2, 3),
        root_regressor=np.full(NUM_VERTICES, 1 / NUM_VERTICES),
        vertex_flip=np.arange(NUM_VERTICES),
    )


def _write(directory: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:480, :640]
    with TSVDatasetWriter(directory, "bench", image_format="jpg") as writer:
        for i in range(count):
            picture = np.stack([(xx + 7 * i) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.uint8)
            label = {
                "center": [320.0 + rng.normal() * 20, 240.0],
                "scale": 2.0,
                "2d_joints": rng.uniform(100, 500, (24, 3)),
                "has_2d_joints": 1,
                "3d_joints": rng.normal(size=(24, 4)),
                "has_3d_joints": 1,
            }
            writer.add(f"{i:06d}", picture, label, vertices=rng.normal(size=(NUM_VERTICES, 3)))
    return directory / "bench.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    topology = _topology()
    with tempfile.TemporaryDirectory() as tmp:
        yaml_path = _write(Path(tmp), args.num)
        size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
        print(f"shard: {args.num} rows, {size_mb:.1f} MB on disk ({size_mb / args.num * 1000:.0f} MB per 1000 rows)")
        print(f"{'workers':>8} {'samples/s':>10} {'ms/sample':>10}")
        for workers in args.workers:
            dataset = MeshDataset(yaml_path, topology, train=True, augment=AugmentConfig(), image_size=args.size)
            loader = create_loader(dataset, batch_size=16, shuffle=True, num_workers=workers, seed=0)
            torch.set_num_threads(1)
            start = time.perf_counter()
            count = sum(len(batch["key"]) for batch in loader)
            elapsed = time.perf_counter() - start
            print(f"{workers:>8} {count / elapsed:>10.1f} {1000 * elapsed / count:>10.2f}")


if __name__ == "__main__":
    main()
