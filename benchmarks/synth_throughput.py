"""Images/second of ``fastmetro synth`` on this machine (target: >= 30 images/s at 224 px, 2 workers).

Usage: ``python benchmarks/synth_throughput.py [--num 512] [--size 224] [--workers 1 2]``

For each worker count it renders ``--num`` images into a temporary folder and prints a table:
steady-state rendering throughput (after the workers have loaded Anny and their GL contexts),
the start-up time, dataset size on disk per 1000 images, and the machine's load average (the
machine may be shared: a busy machine depresses the numbers). A per-stage breakdown for one
process follows (posing with the intersection test, scene + render, label + encode + write).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def stage_breakdown(size: int, count: int = 64) -> list[tuple[str, float]]:
    """Milliseconds per image of each stage, in this process (one torch thread, as the workers)."""
    import json

    from fastmetro.data.synthetic.generator import ShardMaker, SynthConfig
    from fastmetro.data.tsv import _jsonable, encode_image

    config = SynthConfig(out_dir=Path(tempfile.mkdtemp()), num=count, size=size)
    maker = ShardMaker(config)
    indices = list(range(count))
    started = time.perf_counter()
    phenotypes, vertices, normals = maker.pose_bodies(indices)
    posed = time.perf_counter()
    samples = [maker.render_sample(i, phenotypes[i], vertices[i], normals[i]) for i in indices]
    rendered = time.perf_counter()
    for sample in samples:
        encode_image(sample["image"], "jpg", config.jpeg_quality)
        json.dumps([_jsonable(sample["label"])])
        np.packbits(sample["mask"], axis=1)
    encoded = time.perf_counter()
    shutil.rmtree(config.out_dir, ignore_errors=True)
    return [
        ("Anny shape + pose + intersection test", (posed - started) / count * 1e3),
        ("scene sampling + render + labels", (rendered - posed) / count * 1e3),
        ("JPEG + label JSON encoding", (encoded - rendered) / count * 1e3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size", type=int, default=64)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fastmetro.data.synthetic.generator import SynthConfig, generate

    rows = []
    for workers in args.workers:
        out_dir = Path(tempfile.mkdtemp(prefix="synth_bench_"))
        try:
            config = SynthConfig(
                out_dir=out_dir, num=args.num, seed=0, size=args.size, workers=workers, shard_size=args.shard_size
            )
            load_before = os.getloadavg()[0]
            report = generate(config, progress=False)
            load_after = os.getloadavg()[0]
            megabytes = folder_bytes(out_dir) / 1e6 * 1000 / args.num
            rows.append((workers, report.images, report.startup_seconds, report.seconds,
                         report.images_per_second, megabytes, load_before, load_after))
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    print(f"\nfastmetro synth throughput, {args.size}x{args.size}, {os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'images':>6} {'startup s':>9} {'render s':>8} {'images/s':>8} {'MB/1000 img':>11} {'load before/after':>17}")
    for workers, images, startup, seconds, rate, megabytes, before, after in rows:
        print(f"{workers:>7} {images:>6} {startup:>9.1f} {seconds:>8.1f} {rate:>8.1f} {megabytes:>11.0f} {before:>8.2f}/{after:<8.2f}")
    print("\nper-stage cost in one process (ms per image):")
    for name, milliseconds in stage_breakdown(args.size):
        print(f"  {name:<40} {milliseconds:7.1f}")
    print(f"  (load average now {np.round(os.getloadavg(), 2).tolist()})")


if __name__ == "__main__":
    main()
