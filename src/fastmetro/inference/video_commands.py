"""The video options of ``fastmetro infer``: tracking, smoothing and the detector's tiles."""

from __future__ import annotations

import sys

from fastmetro.inference import images as image_io
from fastmetro.inference import validate
from fastmetro.inference.smoothing import MODES


def add_video_arguments(infer) -> None:
    """``--smooth``, the One-Euro parameters, the tracker's and ``--tiles``, on the infer parser."""
    group = infer.add_argument_group(
        "videos",
        "video files become tracks: OUT/<video>/track_XX/frame_XXXXXX.{json,obj}, tracks.json and overlay.mp4",
    )
    group.add_argument(
        "--smooth",
        choices=MODES,
        default="offline",
        help="One-Euro smoothing of each track: none, causal (past frames only) or offline "
        "(forward-backward, zero lag; the default); the JSON keeps the raw values too",
    )
    group.add_argument("--min-cutoff", type=float, default=1.0, help="One-Euro cutoff of a still person, Hz (1.0)")
    group.add_argument("--beta", type=float, default=0.5, help="One-Euro cutoff rise with speed, s/m (0.5)")
    group.add_argument("--d-cutoff", type=float, default=1.0, help="One-Euro cutoff of the speed estimate, Hz (1.0)")
    group.add_argument("--track-birth", type=int, default=3, help="frames a new person must be seen in a row (3)")
    group.add_argument("--track-patience", type=int, default=30, help="frames a track lives unseen (30)")
    group.add_argument(
        "--detect-every",
        type=int,
        default=5,
        help="MediaPipe: the person detector at least every N frames, people followed by their landmarks "
        "in between (5; 1: the detector on every frame)",
    )
    group.add_argument(
        "--no-track", action="store_true", help="videos frame by frame as images (OUT/<video>_fXXXXXX/), no tracks"
    )
    group.add_argument(
        "--tiles",
        type=int,
        default=0,
        help="MediaPipe: also detect on overlapping tiles, N across the shorter side, for small people (0)",
    )


def check_video_options(args) -> None:
    validate.positive_number("--min-cutoff", args.min_cutoff)
    validate.number("--beta", args.beta, 0.0)
    validate.positive_number("--d-cutoff", args.d_cutoff)
    validate.integer("--track-birth", args.track_birth, 1)
    validate.integer("--track-patience", args.track_patience, 0)
    validate.integer("--detect-every", args.detect_every, 1)
    validate.integer("--tiles", args.tiles, 0, 8)


def run_video_tracks(args, predictor, boxes, paths, rigger=None) -> list:
    """Track each video of ``paths`` into ``--out``; returns the failures."""
    from fastmetro.inference.runner import InferenceRunner
    from fastmetro.inference.tracking import TrackerSettings
    from fastmetro.inference.video import SmoothingSettings, track_video

    smoothing = SmoothingSettings(args.smooth, args.min_cutoff, args.beta, args.d_cutoff)
    tracker = TrackerSettings(birth=args.track_birth, patience=args.track_patience)
    failures = []
    names = dict(zip(paths, image_io.output_names(paths)))
    for path in paths:
        if not image_io.is_video(path):
            continue
        with InferenceRunner(predictor, boxes=boxes, side=args.hand, overlay=False) as runner:
            video = track_video(
                runner,
                path,
                smooth=smoothing,
                tracker=tracker,
                out_dir=args.out,
                name=names[path],
                overlay=not args.no_overlay,
                detect_every=args.detect_every,
                rigger=rigger,
            )
        for failure in video.failures:
            print(f"warning: {failure.message}", file=sys.stderr)
        failures += video.failures
        rate = video.frames / video.seconds if video.seconds > 0 else 0.0
        print(
            f"{path}: {video.frames} frame(s), {len(video.tracks)} track(s) ({rate:.1f} frames/s), "
            f"smoothing {smoothing.mode} -> {args.out}/{names[path]}"
        )
    return failures


__all__ = ["add_video_arguments", "check_video_options", "run_video_tracks"]
