"""``fastmetro bench``: speed of the plain, fast and ONNX paths side by side (see fastmetro.cli)."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    from fastmetro.bench.runner import DEFAULT_MODELS, DTYPES, PATHS

    bench = subparsers.add_parser(
        "bench",
        help="measure speed (the paper's Table 2, throughput, FLOPs, memory) of plain / fast / ONNX paths",
        description="Build each model with random weights on a data-free topology of the real sizes and "
        "time the backbone, the part after it and the whole model for every path, interleaved "
        "in one run so the ratios hold on a busy machine. Also counts FLOPs, the achieved GFLOP/s "
        "against a large torch.mm on the same device, and peak activation memory per image. "
        "--lossy adds the int8 / bf16 paths with their output differences in millimetres.",
    )
    bench.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                       help="FastMETRO-<S|M|L>-<R50|H64|R18|R34|BPL|BPF|BPH>[+ablation], METRO-<backbone>")  # fmt: skip
    bench.add_argument("--tasks", nargs="+", choices=("body", "hand"), default=["body"])
    bench.add_argument("--flavor", choices=("paper", "release"), default="paper")
    bench.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N, mps or xpu (cpu)")
    bench.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes (1 gives Table 2)")
    bench.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                       help="fp32 (exact), or bf16/fp16 autocast (plain and fast paths)")  # fmt: skip
    bench.add_argument("--path", nargs="+", choices=PATHS, default=["plain", "fast"], dest="paths",
                       help="paths to measure (plain is always timed as the reference of the ratios)")  # fmt: skip
    bench.add_argument("--size", type=int, default=224, help="image side (default 224)")
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    bench.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="wall time, or this process's CPU time (a proxy on a busy machine; with --threads 1)",
    )
    bench.add_argument("--compile", action="store_true", help="fast path: torch.compile the backbone")
    bench.add_argument("--cuda-graphs", action="store_true", help="fast path on CUDA: replay captured CUDA graphs")
    bench.add_argument("--gemm-size", type=int, default=2048, help="side of the square torch.mm giving the GEMM rate")
    bench.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    bench.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    bench.add_argument(
        "--profile",
        action="store_true",
        help="also list the operators taking the time (self time, FLOPs, bytes) per path/part",
    )
    bench.add_argument(
        "--lossy",
        action="store_true",
        help="also measure int8 dynamic and static quantisation, int8 ONNX Runtime, bf16 against fp32 fast",
    )
    bench.add_argument("--lossy-images", type=int, default=8, help="seeded inputs for the --lossy differences")
    bench.add_argument("--calibration-images", type=int, default=32,
                       help="photo crops calibrating the static int8 path of --lossy")  # fmt: skip
    bench.add_argument("--json", action="store_true", help="print JSON instead of tables")
    bench.add_argument("--out", help="also write the JSON result to this file")
    bench.set_defaults(func=run)


def run(args) -> int:
    import torch

    from fastmetro.bench import report
    from fastmetro.bench.runner import BenchConfig, run_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    config = BenchConfig(
        models=tuple(args.models), tasks=tuple(args.tasks), flavor=args.flavor, device=args.device,
        batches=tuple(args.batch), dtype=args.dtype, paths=tuple(args.paths), image_size=args.size,
        warmup=args.warmup, repeats=args.repeats, compile=args.compile, flops=not args.no_flops,
        memory=not args.no_memory, gemm_size=args.gemm_size, cuda_graphs=args.cuda_graphs,
        profile=args.profile, clock=args.clock,
    )  # fmt: skip
    progress = None if args.json else (lambda what: print(f"... {what}", file=sys.stderr, flush=True))
    result = run_bench(config, progress)
    if args.lossy:
        from fastmetro.bench.lossy import run_lossy

        result["lossy"] = run_lossy(config, args.lossy_images, progress, args.calibration_images)
    if args.out:
        from fastmetro.io import atomic_write

        with atomic_write(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.format_result(result))
        profiles = {f"{r['model']} {r['task']} {r['path']} batch {r['batch']} {part}": ops
                    for r in result["rows"] for part, ops in r.get("profile", {}).items()}  # fmt: skip
        if profiles:
            print()
            print(report.profile_table(profiles))
        if "lossy" in result:
            from fastmetro.bench.lossy import format_lossy

            print()
            print(format_lossy(result["lossy"]))
    return 0
