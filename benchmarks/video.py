"""Video tracking and smoothing on synthetic clips with ground truth, and on opencv's vtest.avi.

Usage::

    python benchmarks/video.py [--clips 3] [--frames 30] [--size 320x240] [--people 2] [--seed 0] [--tiles 0]
        [--tracker KEY=VALUE ...]
        [--detect-every 1 5] [--vtest-frames 100] [--threads 2] [--json out.json] [--strip docs/video_tracks.jpg]

* **Synthetic clips** (:mod:`fastmetro.data.synthetic.video`): 2 Anny bodies (``--people``)
  crossing, the nearer passing in front, a panning camera. The shipped default model with the
  MediaPipe detector and the tracker; per clip and overall, for smoothing none / causal /
  offline: MPJPE, PA-MPJPE, MPVPE (mm, root-centred, on the frames where a track matches a
  person at box IoU >= 0.3), acceleration error (mm/frame^2: the mean norm of the difference of
  the ground truth's and the prediction's second differences of root-centred joints, HMMR/VIBE's
  definition, over runs of consecutive matched frames), identity switches (a person's matched
  track id changing), missed person-frames, false track-frames, missed people (never matched)
  and false tracks (never matched), and the time per frame (detection + network + tracking).
* **vtest.avi** (Debian's opencv-doc, 768x576, 10 frames/s, pedestrians 60-150 px tall): the
  first ``--vtest-frames`` frames, tiles 0 and 2: tracks, time per frame. No ground truth.

Times are wall-clock on the machine it runs on with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from fastmetro.data.synthetic.crowd import CrowdMaker
from fastmetro.data.synthetic.video import render_clip
from fastmetro.errors import FastMetroError
from fastmetro.inference.boxes import DetectorBoxes
from fastmetro.inference.detector import make_detector
from fastmetro.inference.images import Frame, iter_video
from fastmetro.inference.predictor import Predictor
from fastmetro.inference.runner import InferenceRunner
from fastmetro.inference.tracking import Tracker, TrackerSettings, box_iou
from fastmetro.inference.video import DETECT_EVERY, SmoothingSettings, draw_tracks, smooth_track, track_frames
from fastmetro.metrics import pa_mpjpe

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
ROOT = (2, 3)  # mid-hip
MATCH_IOU = 0.3
MODES = ("none", "causal", "offline")


def centred(joints: np.ndarray) -> np.ndarray:
    return joints - joints[list(ROOT)].mean(0)


def match(clip, tracker) -> dict[int, dict[int, int]]:
    """{frame: {gt track id: predicted track id}} by Hungarian assignment on box IoU."""
    by_frame: dict[int, dict[int, object]] = {}
    for track_id, track in tracker.tracks.items():
        for item in track.history:
            by_frame.setdefault(item.frame, {})[track_id] = item.person
    matches = {}
    for frame, people in enumerate(clip.people):
        found = by_frame.get(frame, {})
        ids = list(found)
        cost = np.array([[1.0 - box_iou(p.box, found[i].box) for i in ids] for p in people]).reshape(len(people), -1)
        pairs = {}
        if cost.size:
            rows, columns = linear_sum_assignment(cost)
            pairs = {people[r].track_id: ids[c] for r, c in zip(rows, columns) if cost[r, c] <= 1.0 - MATCH_IOU}
        matches[frame] = pairs
    return matches


def evaluate(clip, tracker, matches, mode: str) -> dict:
    smoothed = {
        track_id: {item.frame: item for item in smooth_track(track.history, SmoothingSettings(mode))}
        for track_id, track in tracker.tracks.items()
    }
    errors, pa, vertex_errors, accel = [], [], [], []
    series: dict[int, list] = {}
    for frame, pairs in matches.items():
        for person in clip.people[frame]:
            if person.track_id not in pairs:
                continue
            item = smoothed[pairs[person.track_id]][frame]
            gt = centred(person.joints)
            pred = centred(item.joints)  # the network's joints are root-centred already; re-centre on the hips
            errors.append(np.linalg.norm(pred - gt, axis=1).mean())
            pa.append(float(pa_mpjpe(torch.tensor(pred[None]), torch.tensor(gt[None]))[0]) / 1000)
            gt_root = person.joints[list(ROOT)].mean(0)
            vertex_errors.append(np.linalg.norm(item.vertices - (person.vertices - gt_root), axis=1).mean())
            series.setdefault(person.track_id, []).append((frame, pred, gt))
    for items in series.values():  # runs of consecutive frames
        run: list = []
        for entry in [*items, None]:
            if entry is not None and (not run or entry[0] == run[-1][0] + 1):
                run.append(entry)
                continue
            if len(run) >= 3:
                pred = np.stack([r[1] for r in run])
                gt = np.stack([r[2] for r in run])
                difference = (gt[2:] - 2 * gt[1:-1] + gt[:-2]) - (pred[2:] - 2 * pred[1:-1] + pred[:-2])
                accel += list(np.linalg.norm(difference, axis=-1).mean(-1))
            run = [] if entry is None else [entry]
    mm = 1000.0
    return {
        "mpjpe": float(np.mean(errors) * mm) if errors else float("nan"),
        "pa_mpjpe": float(np.mean(pa) * mm) if pa else float("nan"),
        "mpvpe": float(np.mean(vertex_errors) * mm) if vertex_errors else float("nan"),
        "accel": float(np.mean(accel) * mm) if accel else float("nan"),
        "matched": len(errors),
    }


def identity(clip, tracker, matches) -> dict:
    switches, missed = 0, 0
    last: dict[int, int] = {}
    for frame, people in enumerate(clip.people):
        for person in people:
            if person.visible_fraction < 0.3:
                continue  # mostly hidden: neither a miss nor a switch
            found = matches[frame].get(person.track_id)
            if found is None:
                missed += 1
                continue
            if person.track_id in last and last[person.track_id] != found:
                switches += 1
            last[person.track_id] = found
    used = {i for pairs in matches.values() for i in pairs.values()}
    false_frames = sum(
        1
        for track_id, track in tracker.tracks.items()
        for item in track.history
        if track_id not in matches.get(item.frame, {}).values()
    )
    people = {p.track_id for frame in clip.people for p in frame}
    return {
        "switches": switches,
        "missed_frames": missed,
        "false_frames": false_frames,
        "missed_people": len(people - set(last)),
        "false_tracks": len(set(tracker.tracks) - used),
        "tracks": len(tracker.tracks),
    }


def run_clip(runner, clip, detect_every: int, settings: TrackerSettings) -> tuple[Tracker, float]:
    frames = [Frame(f"{clip.name}_{i}", f"{clip.name}#frame{i}", i, image) for i, image in enumerate(clip.images)]
    started = time.perf_counter()
    tracker, *_ = track_frames(runner, frames, clip.fps, Tracker(settings), detect_every=detect_every)
    return tracker, (time.perf_counter() - started) / len(frames)


def vtest(predictor, frames: int, tiles: int, detect_every: int, strip: Path | None, settings: TrackerSettings) -> dict:
    detector = make_detector("mediapipe", tiles=tiles)
    with InferenceRunner(predictor, boxes=DetectorBoxes(detector), overlay=False) as runner:
        chosen = [frame for _, frame in zip(range(frames), iter_video(VTEST))]
        started = time.perf_counter()
        tracker, *_ = track_frames(runner, chosen, 10.0, Tracker(settings), detect_every=detect_every)
        seconds = (time.perf_counter() - started) / len(chosen)
    lengths = sorted((len(t.history) for t in tracker.tracks.values()), reverse=True)
    if strip is not None:
        import cv2

        by_frame: dict[int, dict] = {}
        for track_id, track in tracker.tracks.items():
            for item in smooth_track(track.history, SmoothingSettings("offline")):
                by_frame.setdefault(item.frame, {})[track_id] = item
        picks = np.linspace(0, len(chosen) - 1, 4).round().astype(int)
        tiles_drawn = [draw_tracks(chosen[i].pixels, by_frame.get(i, {}), point_step=2) for i in picks]
        picture = np.concatenate([np.concatenate(tiles_drawn[:2], 1), np.concatenate(tiles_drawn[2:], 1)], 0)
        picture = cv2.resize(picture, (picture.shape[1] // 2, picture.shape[0] // 2), interpolation=cv2.INTER_AREA)
        strip.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(strip), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return {
        "frames": len(chosen),
        "tiles": tiles,
        "detect_every": detect_every,
        "tracks": len(tracker.tracks),
        "lengths": lengths,
        "s_per_frame": seconds,
    }


def print_table(clips: list[dict]) -> None:
    print(
        f"{'clip':10s} {'det':>3s} {'smooth':8s} {'MPJPE':>7s} {'PA-MPJPE':>9s} {'MPVPE':>7s} {'accel':>7s}"
        f" {'matched':>7s} {'tracks':>6s} {'switch':>6s} {'missF':>5s} {'falseF':>6s} {'missP':>5s} {'falseT':>6s}"
        f" {'ms/frame':>8s}"
    )
    for every in sorted({row["detect_every"] for row in clips}):
        rows = [row for row in clips if row["detect_every"] == every]
        for row in rows:
            for mode in MODES:
                m = row["modes"][mode]
                print(
                    f"{row['clip']:10s} {every:3d} {mode:8s} {m['mpjpe']:7.1f} {m['pa_mpjpe']:9.1f} {m['mpvpe']:7.1f}"
                    f" {m['accel']:7.2f} {m['matched']:7d} {row['tracks']:6d} {row['switches']:6d}"
                    f" {row['missed_frames']:5d} {row['false_frames']:6d} {row['missed_people']:5d}"
                    f" {row['false_tracks']:6d} {row['s_per_frame'] * 1000:8.0f}"
                )
        for mode in MODES:
            weights = [row["modes"][mode]["matched"] for row in rows]
            mean = {
                key: np.average([row["modes"][mode][key] for row in rows], weights=weights)
                for key in ("mpjpe", "pa_mpjpe", "mpvpe", "accel")
            }
            total = {key: sum(row[key] for row in rows) for key in IDENTITY}
            print(
                f"{'overall':10s} {every:3d} {mode:8s} {mean['mpjpe']:7.1f} {mean['pa_mpjpe']:9.1f}"
                f" {mean['mpvpe']:7.1f} {mean['accel']:7.2f} {sum(weights):7d} {total['tracks']:6d}"
                f" {total['switches']:6d} {total['missed_frames']:5d} {total['false_frames']:6d}"
                f" {total['missed_people']:5d} {total['false_tracks']:6d}"
                f" {np.mean([r['s_per_frame'] for r in rows]) * 1000:8.0f}"
            )


IDENTITY = ("tracks", "switches", "missed_frames", "false_frames", "missed_people", "false_tracks")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--people", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the clips' seed (0: the reported clips; tune on others)")
    parser.add_argument(
        "--tracker",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="TrackerSettings fields, e.g. patience=20 (for tuning on clips of another --seed)",
    )
    parser.add_argument("--tiles", type=int, default=0)
    parser.add_argument(
        "--detect-every", type=int, nargs="+", default=[1, DETECT_EVERY], help="detector every N frames (each value)"
    )
    parser.add_argument("--vtest-frames", type=int, default=100)
    parser.add_argument("--vtest-tiles", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--strip", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        settings = TrackerSettings(
            **{key: float(value) for key, value in (item.split("=", 1) for item in args.tracker)}
        )
    except (TypeError, ValueError, FastMetroError) as error:  # an unknown field, a non-number, a bad value
        parser.error(f"--tracker: {error}")
    width, height = (int(v) for v in args.size.split("x"))
    predictor = Predictor()
    report: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    report["tracker"] = dataclasses.asdict(settings)
    clips = []
    if args.clips:
        maker = CrowdMaker((width, height), split="generalisation", samples=2)
        rendered = [
            render_clip(maker, args.seed, index, people=args.people, frames=args.frames) for index in range(args.clips)
        ]
        maker.release()
        detector = make_detector("mediapipe", tiles=args.tiles)
        with InferenceRunner(predictor, boxes=DetectorBoxes(detector), overlay=False) as runner:
            for every in args.detect_every:
                for clip in rendered:
                    tracker, seconds = run_clip(runner, clip, every, settings)
                    matches = match(clip, tracker)
                    row = {"clip": clip.name, "detect_every": every, "s_per_frame": seconds}
                    row.update(identity(clip, tracker, matches))
                    row["modes"] = {mode: evaluate(clip, tracker, matches, mode) for mode in MODES}
                    clips.append(row)
        print_table(clips)
    report["clips"] = clips
    report["vtest"] = []
    if args.vtest_frames and VTEST.is_file():
        last = (max(args.vtest_tiles, default=0), args.detect_every[-1])
        for every in args.detect_every:
            for tiles in args.vtest_tiles:
                strip = args.strip if (tiles, every) == last else None
                result = vtest(predictor, args.vtest_frames, tiles, every, strip, settings)
                report["vtest"].append(result)
                print(
                    f"vtest.avi {result['frames']} frames, tiles {tiles}, detector every {every}: "
                    f"{result['tracks']} tracks (lengths {result['lengths'][:12]}), "
                    f"{result['s_per_frame'] * 1000:.0f} ms/frame"
                )
    elif args.vtest_frames:
        print(f"{VTEST}: missing (Debian package opencv-doc); skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
