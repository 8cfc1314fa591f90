"""The GPU part of the speed work, as one prepared script (needs a CUDA GPU; not run on the CPU-only
development machine). About 5 minutes on an H100/H200-class GPU.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--quick]

1. Output differences on 8 seeded images (random weights, 224 x 224), per output, for
   FastMETRO-S-R50 and FastMETRO-L-H64 (body): fast fp32 vs plain fp32, and fast bf16 vs fast fp32.
2. ``fastmetro bench --device cuda`` in bf16 with CUDA graphs for the fast path: S-R50 at batch 1
   and 256, L-H64 at batch 1 (plain and fast side by side), and fp32 at batch 1 for reference.

Targets (issue 11): S-R50 >= 500 images/s at batch 1 and >= 5000 at batch 256 in bf16; L-H64
>= 150 images/s at batch 1.
"""

from __future__ import annotations

import argparse
import json

import torch


def output_differences(name: str, images: torch.Tensor) -> dict:
    from fastmetro.bench.runner import bench_network
    from fastmetro.model.fast import prepare_for_inference

    model = bench_network(name, "body", "paper", images.device, seed=0)
    with torch.no_grad():
        plain = model(images)
        fast = prepare_for_inference(model)(images)
        bf16 = prepare_for_inference(model, autocast_dtype="bf16")(images)
    keys = ("camera", "joints", "coarse_vertices", "intermediate_vertices", "fine_vertices", "mesh_joints")

    def diff(a, b):
        return {k: float((a[k].float() - b[k].float()).abs().max()) for k in keys}

    return {"fast_vs_plain_fp32": diff(fast, plain), "bf16_vs_fp32_fast": diff(bf16, fast)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a GPU machine")
    from fastmetro.bench import report
    from fastmetro.bench.runner import BenchConfig, run_bench

    device = torch.device("cuda")
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    names = ("FastMETRO-S-R50", "FastMETRO-L-H64")
    result = {"differences": {name: output_differences(name, images) for name in names}}
    print(json.dumps(result["differences"], indent=2), flush=True)
    repeats, warmup = (5, 2) if args.quick else (30, 10)
    runs = {
        "bf16 S-R50 b1/b256": BenchConfig(models=("FastMETRO-S-R50",), device="cuda", dtype="bf16", batches=(1, 256),
                                         cuda_graphs=True, repeats=repeats, warmup=warmup, memory=True),
        "bf16 L-H64 b1": BenchConfig(models=("FastMETRO-L-H64",), device="cuda", dtype="bf16", batches=(1,),
                                     cuda_graphs=True, repeats=repeats, warmup=warmup),
        "fp32 S-R50/L-H64 b1": BenchConfig(models=("FastMETRO-S-R50", "FastMETRO-L-H64"), device="cuda",
                                           batches=(1,), cuda_graphs=True, repeats=repeats, warmup=warmup),
    }  # fmt: skip
    for title, config in runs.items():
        bench = run_bench(config)
        result[title] = bench
        print(f"\n== {title}\n" + report.format_result(bench), flush=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
