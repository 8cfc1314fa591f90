"""Batch-1 CPU latency of FastMETRO-S/M/L-R50: backbone, transformer part and whole model.

"Transformer part" = everything after the backbone (conv_1x1, both transformers, heads,
upsampling), timed on the backbone's cached feature map, as the paper's Table 2 splits it.

    python benchmarks/latency.py [--models FastMETRO-S-R50 ...] [--flavor paper] [--threads N]
                                 [--runs 20] [--warmup 3] [--size 224]

Prints a table of median / minimum milliseconds. Weights are random (no
data needed); the topology is the built-in SMPL sizes, with fixed upsampling matrices of the
real sparsity (3 non-zeros per row) so the timing is representative.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy.sparse as sp
import torch


def body_topology():
    """SMPL-sized topology (6890/1723/431, 14 joints) with realistic sparsity, no data files."""
    from fastmetro.model.presets import sized_topology

    base = sized_topology("body")
    rng = np.random.default_rng(0)
    counts = base.level_vertex_counts

    def upsampling(rows, cols):
        indices = rng.integers(0, cols, size=(rows, 3))
        return sp.csr_matrix((np.full(rows * 3, 1 / 3), (np.repeat(np.arange(rows), 3), indices.ravel())),
                             shape=(rows, cols))  # fmt: skip

    coarse = counts[-1]
    neighbours = rng.integers(0, coarse, size=(coarse, 5))
    adjacency = sp.csr_matrix((np.ones(coarse * 5), (np.repeat(np.arange(coarse), 5), neighbours.ravel())),
                              shape=(coarse, coarse))  # fmt: skip
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    from dataclasses import replace

    return replace(
        base,
        upsample=tuple(upsampling(counts[level], counts[level + 1]) for level in range(len(counts) - 1)),
        coarse_adjacency=adjacency,
        joint_regressor=rng.random((14, counts[0])) / counts[0],
    )


def time_call(function, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def summary(times: list[float]) -> str:
    # The minimum is the least disturbed run (useful on a shared machine).
    return f"{statistics.median(times):8.1f} / {min(times):.1f}"


def main(argv=None) -> int:
    from fastmetro.model import FastMETRO, model_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["FastMETRO-S-R50", "FastMETRO-M-R50", "FastMETRO-L-R50"])
    parser.add_argument("--flavor", default="paper", choices=("paper", "release"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    topology = body_topology()
    images = torch.randn(1, 3, args.size, args.size)
    print(f"# batch 1, {args.size}x{args.size}, CPU: {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median / min ms of {args.runs} runs")  # fmt: skip
    header = f"{'model':<18} {'backbone':>22} {'transformer part':>22} {'whole model':>22}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        model = FastMETRO(model_config(name, args.flavor), topology).eval()
        with torch.inference_mode():
            features = model.backbone_features(images)
            head = _HeadOnly(model, features)
            backbone_ms = time_call(lambda: model.backbone_features(images), args.runs, args.warmup)
            head_ms = time_call(head, args.runs, args.warmup)
            whole_ms = time_call(lambda: model(images), args.runs, args.warmup)
        print(f"{name:<18} {summary(backbone_ms):>22} {summary(head_ms):>22} {summary(whole_ms):>22}")
    return 0


class _HeadOnly:
    """Calls the model's forward with the backbone replaced by its cached output."""

    def __init__(self, model, features):
        self.model, self.features = model, features

    def __call__(self):
        original = self.model.backbone_features
        self.model.backbone_features = lambda images: self.features
        try:
            return self.model(torch.empty(1, 3, 1, 1))
        finally:
            self.model.backbone_features = original


if __name__ == "__main__":
    raise SystemExit(main())
