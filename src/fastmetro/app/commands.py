"""``fastmetro app``: the web app (see fastmetro.cli). Gradio is the ``app`` extra."""

from __future__ import annotations

import atexit
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from fastmetro.errors import FastMetroError


def register(subparsers) -> None:
    app = subparsers.add_parser(
        "app",
        help="web app: an image or video in, the mesh over the person and a 3D view out",
        description="Serve a page to run FastMETRO on photos, webcam snapshots and videos, with a 3D viewer, "
        "attention maps and downloads. Needs `pip install 'fastmetro[app]'`. Listens on 127.0.0.1 "
        "unless --host says otherwise.",
    )
    app.add_argument(
        "--checkpoint",
        action="append",
        metavar="CK",
        help="model checkpoint, or `default` for the shipped model (repeat to offer several); "
        "default: the shipped model, else the newest `make demo` model",
    )
    app.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0 exposes the app to the network)",
    )
    app.add_argument("--port", type=int, default=7860, help="port (7860)")
    app.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N, mps or xpu (cpu)")
    app.add_argument(
        "--detector",
        default="mediapipe",
        metavar="mediapipe|none|WEIGHTS",
        help="how people are found when a request gives no box: `mediapipe` (default: BlazePose, hand "
        "models: MediaPipe Hands), `none` (the whole image), or a torchvision detector's weights file",
    )
    app.add_argument(
        "--detector-threshold", type=float, help="detector score threshold (default: MediaPipe 0.3, torchvision 0.7)"
    )
    app.add_argument("--max-people", type=int, default=20, help="detector: at most N people (20)")
    app.add_argument("--topology", help="topology of official .bin checkpoints (default: the checkpoint's)")
    app.add_argument(
        "--data-dir",
        action="append",
        default=[],
        help="folder with the SMPL/MANO files for the smpl/mano topologies (repeat for both)",
    )
    app.add_argument(
        "--image-size",
        type=int,
        help="network input size (default: the model's; a training run's checkpoint: its crop size)",
    )
    app.add_argument("--max-megapixels", type=float, default=40.0, help="refuse larger images (40)")
    app.add_argument("--max-video-frames", type=int, default=300, help="process at most N frames of a video (300)")
    app.set_defaults(func=run_app)


def check_app_options(args) -> None:
    from fastmetro.inference import validate

    validate.integer("--port", args.port, 1, 65535)
    args.device = str(validate.device("--device", args.device))  # "auto" becomes a device
    if args.detector_threshold is not None:
        validate.number("--detector-threshold", args.detector_threshold, 0.0, 1.0)
    validate.integer("--max-people", args.max_people, 1)
    if args.image_size is not None:
        validate.image_size("--image-size", args.image_size)
    validate.positive_number("--max-megapixels", args.max_megapixels, high=1000.0)
    validate.integer("--max-video-frames", args.max_video_frames, 1, 100_000)
    if not args.host or any(c.isspace() for c in args.host):
        raise FastMetroError(f"--host {args.host!r}: not a host name or address")


def checkpoints_from_args(args) -> list[Path]:
    """The ``--checkpoint`` files, or the default one (and say which)."""
    if args.checkpoint:
        from fastmetro.weights import resolve_checkpoint

        return [resolve_checkpoint(path) for path in args.checkpoint]  # "default": the shipped model
    from fastmetro.weights import find_default_checkpoint

    default = find_default_checkpoint()
    print(f"no --checkpoint given: using {default.origin}", flush=True)
    return [default.path]


def run_app(args) -> int:
    import importlib.util

    check_app_options(args)
    if importlib.util.find_spec("gradio") is None:
        raise FastMetroError("the web app needs Gradio: pip install 'fastmetro[app]'")
    from fastmetro.app.server import create_app

    checkpoints = checkpoints_from_args(args)
    from fastmetro.inference.detector import make_detector

    # Body detector here; each hand model's runs switch it to the palm detector (detector_for).
    detector = make_detector(
        args.detector, threshold=args.detector_threshold, max_people=args.max_people, device=args.device
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks
    work_dir = Path(tempfile.mkdtemp(prefix="fastmetro-app-"))
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    app = create_app(
        checkpoints,
        work_dir,
        device=args.device,
        image_size=args.image_size,
        topology=args.topology,
        data_dirs=args.data_dir,
        detector=detector,
        max_megapixels=args.max_megapixels,
        max_video_frames=args.max_video_frames,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: other machines can reach the app", file=sys.stderr)
    # `kill` (SIGTERM) ends the app like Ctrl-C: models released, work folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        app.launch(args.host, args.port)
    finally:
        app.close()
    return 0
