"""Images/second of ``fastmetro synth`` on this machine (target: >= 30 images/s at 224 px, 2 workers).

Usage: ``python benchmarks/synth_throughput.py [--num 512] [--size 224] [--workers 1 2] [--versions 1 2]``

For each generator version (1: standing poses, one light, flat colours, whole bodies; 2: pose
families, several lights, patterned clothing, close-ups; measured side by side in one run, so at
the same machine load) and worker count it renders ``--num`` images into a temporary folder and
prints a table:
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


def stage_breakdown(size: int, version: int, count: int = 64) -> list[tuple[str, float, float]]:
    """(stage, wall ms, CPU ms) per image, in this process (one torch thread, as the workers).

    CPU time (all threads of this process, llvmpipe's included) hardly depends on what else
    runs on the machine, so ``2000 / total CPU ms`` estimates images/s on 2 idle cores.
    """
    import json

    from fastmetro.data.synthetic.generator import ShardMaker, SynthConfig
    from fastmetro.data.tsv import _jsonable, encode_image

    config = SynthConfig(out_dir=Path(tempfile.mkdtemp()), num=count, size=size, **version_settings(version))
    maker = ShardMaker(config)
    indices = list(range(count))
    stamps = [(time.perf_counter(), time.process_time())]
    phenotypes, vertices, normals, families = maker.pose_bodies(indices)
    stamps.append((time.perf_counter(), time.process_time()))
    samples = [maker.render_sample(i, phenotypes[i], vertices[i], normals[i], families[i]) for i in indices]
    stamps.append((time.perf_counter(), time.process_time()))
    for sample in samples:
        encode_image(sample["image"], "jpg", config.jpeg_quality)
        json.dumps([_jsonable(sample["label"])])
        np.packbits(sample["mask"], axis=1)
    stamps.append((time.perf_counter(), time.process_time()))
    shutil.rmtree(config.out_dir, ignore_errors=True)
    maker.renderer.release()
    names = ("Anny shape + pose + intersection test", "scene sampling + render + labels", "JPEG + label JSON encoding")
    return [
        (name, (after[0] - before[0]) / count * 1e3, (after[1] - before[1]) / count * 1e3)
        for name, before, after in zip(names, stamps, stamps[1:])
    ]


def version_settings(version: int) -> dict:
    """SynthConfig settings of a generator version (1 only knows standing poses)."""
    return {"generator_version": version, "poses": "standing" if version == 1 else "mixed"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--versions", type=int, nargs="+", default=[1, 2], help="generator versions to compare")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fastmetro.data.synthetic.generator import ShardMaker, SynthConfig, generate

    rows = []
    for version in args.versions:
        for workers in args.workers:
            out_dir = Path(tempfile.mkdtemp(prefix="synth_bench_"))
            try:
                config = SynthConfig(
                    out_dir=out_dir,
                    num=args.num,
                    seed=0,
                    size=args.size,
                    workers=workers,
                    shard_size=args.shard_size,
                    **version_settings(version),
                )
                load_before = os.getloadavg()[0]
                if workers == 1:  # in this process: also measure the CPU time of the whole pipeline
                    maker = ShardMaker(config)
                    cpu_before = time.process_time()
                    report = generate(config, progress=False, maker=maker)
                    cpu_per_image = (time.process_time() - cpu_before) / report.images * 1e3
                    maker.renderer.release()
                else:
                    report = generate(config, progress=False)
                    cpu_per_image = float("nan")
                load_after = os.getloadavg()[0]
                megabytes = folder_bytes(out_dir) / 1e6 * 1000 / args.num
                rows.append(
                    (
                        version,
                        workers,
                        report.images,
                        report.startup_seconds,
                        report.seconds,
                        report.images_per_second,
                        cpu_per_image,
                        megabytes,
                        load_before,
                        load_after,
                    )
                )
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)

    print(f"\nfastmetro synth throughput, {args.size}x{args.size}, {os.cpu_count()} CPUs")
    print(
        f"{'version':>7} {'workers':>7} {'images':>6} {'startup s':>9} {'render s':>8} {'images/s':>8} "
        f"{'CPU ms/img':>10} {'MB/1000 img':>11} {'load before/after':>17}"
    )
    for version, workers, images, startup, seconds, rate, cpu, megabytes, before, after in rows:
        print(
            f"{version:>7} {workers:>7} {images:>6} {startup:>9.1f} {seconds:>8.1f} {rate:>8.1f} {cpu:>10.1f} "
            f"{megabytes:>11.0f} {before:>8.2f}/{after:<8.2f}"
        )
    for version, workers, *rest in rows:
        if workers == 1 and np.isfinite(rest[4]):
            print(
                f"-> version {version}: whole pipeline (with writing) {rest[4]:.1f} CPU ms per image: about "
                f"{2000.0 / rest[4]:.0f} images/s with 2 workers on 2 idle cores"
            )
    for version in args.versions:
        print(f"\nper-stage cost in one process, version {version} (ms per image):")
        print(f"  {'stage':<40} {'wall':>7} {'CPU':>7}")
        stages = stage_breakdown(args.size, version)
        for name, wall, cpu in stages:
            print(f"  {name:<40} {wall:7.1f} {cpu:7.1f}")
        total_cpu = sum(cpu for _, _, cpu in stages)
        print(f"  {'total':<40} {sum(w for _, w, _ in stages):7.1f} {total_cpu:7.1f}")
    print(f"  (load average now {np.round(os.getloadavg(), 2).tolist()})")


if __name__ == "__main__":
    main()
