"""Batch-1 latency of FastMETRO-S/M/L-R50 (backbone, transformer part, whole), plain and fast paths.

A shortcut for ``fastmetro bench --models ... --batch 1 --path plain fast`` (see
:mod:`fastmetro.bench`): random weights on a data-free SMPL-sized topology, the parts timed
interleaved in one run, median (min) milliseconds.

    python benchmarks/latency.py [--models FastMETRO-S-R50 ...] [--flavor paper] [--threads N]
                                 [--runs 20] [--warmup 3] [--size 224]
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> int:
    from fastmetro.bench import report
    from fastmetro.bench.runner import BenchConfig, run_bench

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
    config = BenchConfig(models=tuple(args.models), flavor=args.flavor, batches=(1,), image_size=args.size,
                         warmup=args.warmup, repeats=args.runs, flops=False, memory=False)  # fmt: skip
    result = run_bench(config)
    print("\n".join(report.header_lines(result)))
    print(report.table2(result["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
