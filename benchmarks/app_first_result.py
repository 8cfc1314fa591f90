"""Time to first result of `fastmetro app`, measured in a real headless Chromium; optional screenshot.

    python benchmarks/app_first_result.py [--checkpoint CK] [--data-dir DIR] [--image-size 64]
        [--sample cameraman|astronaut] [--joint Head] [--screenshot docs/app.png]

Without --checkpoint, a small untrained FastMETRO-S-R18 (transformer widths 64/32, 2 heads) is made
on the SMPL topology from ../shared/data/smpl (or --data-dir). Starts `python -m fastmetro app`,
opens the page, uploads the sample with its box and clicks Reconstruct, then repeats the request
(warm). Prints the time of each stage. Needs the app and test extras and `make browser-deps`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from app_browser import AppProcess, Page, find_browser, quit_browser, start_browser  # noqa: E402
from fastmetro.app.samples import BUNDLED, bundled_samples  # noqa: E402


def tiny_checkpoint(folder: Path, data_dir: Path) -> Path:
    import torch

    import fastmetro
    from fastmetro import topology
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = fastmetro.create_model(
        "FastMETRO-S-R18",
        topology=topology.load("smpl", data_dir),
        model_dims=(64, 32),
        feedforward_dims=(128, 64),
        num_heads=2,
    )
    return save_checkpoint(model, folder / "tiny.safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    shared = Path(os.environ.get("FASTMETRO_SHARED_DIR", ROOT.parent / "shared"))
    parser.add_argument("--data-dir", default=str(shared / "data" / "smpl"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--sample", default="cameraman", choices=[Path(file).stem for _, file, *_ in BUNDLED])
    parser.add_argument("--joint", default="Head", help="attention joint ('' for none)")
    parser.add_argument("--screenshot", help="save a full-page screenshot with the first result here")
    args = parser.parse_args()
    if None in find_browser():
        print("chromium / chromedriver not found: make browser-deps", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastmetro-bench-app-"))
    checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(work, Path(args.data_dir))
    sample = next(s for s in bundled_samples(work / "samples") if s.path.stem == args.sample)

    app_args = ["--checkpoint", str(checkpoint), "--data-dir", args.data_dir]
    if args.image_size:
        app_args += ["--image-size", str(args.image_size)]
    app = AppProcess(app_args, work / "app.log", env=dict(os.environ))
    session = None
    times = {}
    try:
        times["app start -> page served"] = app.wait_ready()
        begin = time.perf_counter()
        session = start_browser()
        page = Page(session, app.url)
        times["browser start + page loaded"] = time.perf_counter() - begin
        page.set_image(sample.path)
        page.set_boxes(sample.boxes)
        if args.joint:
            page.choose_joint(args.joint)
        status, times["first request (click -> result shown)"] = page.run_image()
        begin = time.perf_counter()
        drawn = page.viewer_drawn_pixels()
        times["3D viewer drawn after the result"] = time.perf_counter() - begin
        times["app start -> first result (total)"] = time.perf_counter() - app.started
        print(status)
        if args.screenshot:
            page.full_page_screenshot(args.screenshot)
            print(f"screenshot: {args.screenshot}")
        status, times["second request (warm)"] = page.run_image()
        if not drawn:
            print("warning: the 3D viewer drew nothing", file=sys.stderr)
    finally:
        if session is not None:
            quit_browser(session)
        app.stop()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\n{'stage':44s} seconds   (cpu count {os.cpu_count()}, load average {load:.1f})")
    for name, seconds in times.items():
        print(f"{name:44s} {seconds:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
