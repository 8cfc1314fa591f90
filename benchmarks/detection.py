"""A person detector on synthetic crowd scenes and real photos: precision, recall, time per image.

Usage::

    python benchmarks/detection.py [--detector mediapipe|standin|none|WEIGHTS] [--num 200] [--seed 0]
        [--size 640x480] [--thresholds 0.3 0.5 0.7] [--option presence_threshold=0.5] [--out DIR]
        [--write-scenes DIR] [--json out.json]

* **Synthetic**: ``--num`` crowd scenes (:mod:`fastmetro.data.synthetic.crowd`: 1-4 Anny bodies,
  some far away, some overlapping, some cut by the border). At each score threshold: precision
  and recall at IoU 0.5 (greedy one-to-one matching by descending score; a person flagged
  ``ignore``, mostly hidden or under 24 px, is neither a miss when not found nor a false positive
  when found), mean IoU of the matches; then recall by person height, visible fraction, facing.
* **Real photos**: opencv-doc's ``messi5.jpg``, ``basketball1.png``, ``basketball2.png`` (skipped
  with a note when the Debian package ``opencv-doc`` is missing) and scikit-image's astronaut,
  coffee, chelsea, cat, rocket and camera: the people found (boxes, scores) against the people a
  viewer sees (hand-labelled boxes, :data:`PHOTOS`), and nothing where nobody is.
* **Time** per 640x480 image (median of ``--runs``, ``--threads`` torch threads, default 2).

``--out DIR`` saves each real photo with its boxes drawn (PNG); ``--write-scenes DIR`` writes the
first ``--write-count`` scenes as images + ``boxes.json`` (what ``fastmetro infer --boxes`` reads).
``--detector standin`` is a fake detector (the ground truth, jittered, with misses and false
alarms) to try the benchmark without networks; ``none`` is the whole image as one box (fastmetro's
behaviour without a detector).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

IOU_THRESHOLD = 0.5
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
HEIGHT_BINS = ((24, 48), (48, 96), (96, 192), (192, 10_000))
VISIBLE_BINS = ((0.3, 0.6), (0.6, 0.9), (0.9, 1.01))
FACING_BINS = ((0, 60, "towards the camera"), (60, 120, "sideways"), (120, 181, "back to the camera"))


@dataclass(frozen=True)
class Photo:
    """A real photo: where it is and the people a viewer counts, (x, y, w, h) pixels, labelled by
    hand (each person's whole visible extent). ``crowd``: more people are in the picture (a
    blurred crowd behind), so detections beyond the labelled ones are not wrong."""

    name: str
    source: str  # "opencv" (a file of opencv-doc's examples) or "skimage" (a scikit-image sample)
    people: tuple[tuple[float, float, float, float], ...]
    crowd: bool = False
    note: str = ""


PHOTOS = (
    Photo("messi5.jpg", "opencv", ((68, 60, 390, 277),), crowd=True, note="a footballer; blurred spectators behind"),
    Photo(
        "basketball1.png",
        "opencv",
        ((35, 80, 130, 400), (435, 22, 205, 458)),
        note="two men, the right one cut by the border",
    ),
    Photo(
        "basketball2.png",
        "opencv",
        ((35, 80, 135, 400), (428, 20, 212, 460)),
        note="two men, the right one cut by the border",
    ),
    Photo("astronaut", "skimage", ((20, 14, 345, 498),), note="a portrait to the waist"),
    Photo("camera", "skimage", ((0, 62, 335, 450),), note="a cameraman, cut at the thighs"),
    Photo("coffee", "skimage", (), note="nobody"),
    Photo("chelsea", "skimage", (), note="nobody (a cat)"),
    Photo("cat", "skimage", (), note="nobody (a cat)"),
    Photo("rocket", "skimage", (), note="nobody (a launch pad)"),
)


# ---------------------------------------------------------------------------------- detectors
@dataclass(frozen=True)
class Found:
    """One detection: box (x, y, w, h) pixels and score (the interface of fastmetro's Detection)."""

    box: tuple[float, float, float, float]
    score: float


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class StandIn:
    """A fake detector: the ground truth of the scenes it was shown (``truth``: image key -> people),
    jittered by ~5 % of the box, found more often when larger and more visible, plus a false
    alarm now and then; nothing on images it does not know. Deterministic per image."""

    def __init__(self, truth: dict):
        self.truth = truth

    def __call__(self, image: np.ndarray) -> list[Found]:
        key = _key(image)
        if key not in self.truth:
            return []
        rng = np.random.default_rng(int(key[:12], 16))
        found = []
        for person in self.truth[key]:
            x, y, w, h = person.box
            chance = min(1.0, 1.3 * person.visible_fraction) * min(1.0, h / 48.0)
            if rng.uniform() < chance:
                jitter = rng.normal(0.0, 0.05, 4) * [w, h, w, h]
                found.append(
                    Found(
                        (x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]),
                        float(np.clip(chance * rng.uniform(0.6, 1.0), 0.05, 1.0)),
                    )
                )
        if rng.uniform() < 0.2:  # a false alarm somewhere
            height, width = image.shape[:2]
            size = rng.uniform(30, 150)
            found.append(
                Found(
                    (rng.uniform(0, width - size), rng.uniform(0, height - size), size / 2, size),
                    float(rng.uniform(0.05, 0.6)),
                )
            )
        return found


def whole_image(image: np.ndarray) -> list[Found]:
    """No detector: the whole image is the box (fastmetro's behaviour when no box is given)."""
    height, width = image.shape[:2]
    return [Found((0.0, 0.0, float(width), float(height)), 1.0)]


def load_detector(name: str, threshold: float, landmarks: str, device: str, truth: dict, options: dict):
    """The detector measured: ``mediapipe``, ``standin``, ``none`` or a torchvision weights file.
    ``options``: more keyword arguments of the MediaPipe detector (e.g. ``presence_threshold``)."""
    if name == "none":
        return whole_image
    if name == "standin":
        return StandIn(truth)
    from fastmetro.inference import detector as detectors

    if name == "mediapipe":
        kind = getattr(detectors, "MediaPipePersonDetector", None) or detectors.MediaPipeDetector
        made = kind(threshold=threshold, landmarks=None if landmarks == "none" else landmarks, device=device, **options)
        return made.load() if hasattr(made, "load") else made
    return detectors.make_detector(name, threshold=threshold, device=device)


# ---------------------------------------------------------------------------------- matching
def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(found, people, threshold: float) -> dict:
    """Greedy one-to-one matching at IoU 0.5 of detections (score >= ``threshold``, best first) to
    people ``[(box, ignore)]``. A detection that matches no counted person but an ignored one
    is neither right nor wrong. Returns true / false positives, misses, the matched people's
    indices and the matches' IoUs."""
    kept = sorted((d for d in found if d.score >= threshold), key=lambda d: -d.score)
    taken = [False] * len(people)
    matched, ious, false_positives = [], [], 0
    for detection in kept:
        best, best_iou = None, IOU_THRESHOLD
        for index, (box, ignore) in enumerate(people):
            overlap = iou(detection.box, box)
            if not taken[index] and not ignore and overlap >= best_iou:
                best, best_iou = index, overlap
        if best is not None:
            taken[best] = True
            matched.append(best)
            ious.append(best_iou)
        elif not any(ignore and iou(detection.box, box) >= IOU_THRESHOLD for box, ignore in people):
            false_positives += 1
    counted = sum(not ignore for _, ignore in people)
    return {"tp": len(matched), "fp": false_positives, "fn": counted - len(matched), "matched": matched, "ious": ious}


# ---------------------------------------------------------------------------------- synthetic
def evaluate_scenes(scenes, detections, thresholds) -> dict:
    """Precision / recall / mean IoU per threshold; recall by height, visibility and facing at the lowest."""
    rows = []
    for threshold in thresholds:
        results = [
            match(found, [(p.box, p.ignore) for p in scene.people], threshold)
            for scene, found in zip(scenes, detections)
        ]
        tp, fp, fn = (sum(r[k] for r in results) for k in ("tp", "fp", "fn"))
        ious = [value for r in results for value in r["ious"]]
        rows.append(
            {
                "threshold": threshold,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": tp / (tp + fp) if tp + fp else float("nan"),
                "recall": tp / (tp + fn) if tp + fn else float("nan"),
                "mean_iou": float(np.mean(ious)) if ious else float("nan"),
            }
        )
    lowest = min(thresholds)
    people = [p for scene in scenes for p in scene.people]
    return {
        "rows": rows,
        "threshold_for_groups": lowest,
        "groups": recall_by_group(scenes, detections, lowest),
        "people": len(people),
        "ignored": sum(p.ignore for p in people),
        "scenes": len(scenes),
    }


def recall_by_group(scenes, detections, threshold: float) -> dict:
    """{group: {people, found}} of the counted people by box height, visible fraction and facing."""
    bins = [
        (f"height {low}-{high} px" if high < 10_000 else f"height >= {low} px", lambda p: p.box[3], low, high)
        for low, high in HEIGHT_BINS
    ]
    bins += [
        (f"visible {low:.1f}-{min(high, 1.0):.1f}", lambda p: p.visible_fraction, low, high)
        for low, high in VISIBLE_BINS
    ]
    bins += [
        (f"facing {name} ({low}-{min(high, 180)} deg)", lambda p: p.facing, low, high)
        for low, high, name in FACING_BINS
    ]
    groups = {name: {"people": 0, "found": 0} for name, *_ in bins}
    for scene, found in zip(scenes, detections):
        matched = set(match(found, [(p.box, p.ignore) for p in scene.people], threshold)["matched"])
        for index, person in enumerate(scene.people):
            for name, value, low, high in bins:
                if not person.ignore and low <= value(person) < high:
                    groups[name]["people"] += 1
                    groups[name]["found"] += index in matched
    return groups


# ---------------------------------------------------------------------------------- real photos
def read_photo(photo: Photo) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB, or None when its source is not installed."""
    if photo.source == "opencv":
        import cv2

        path = OPENCV_DATA / photo.name
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    import skimage.data

    image = np.asarray(getattr(skimage.data, photo.name)())
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else np.ascontiguousarray(image[:, :, :3])


def evaluate_photos(detector, threshold: float, out: Path | None) -> list[dict]:
    rows = []
    for photo in PHOTOS:
        image = read_photo(photo)
        if image is None:
            rows.append({"photo": photo.name, "missing": True})
            continue
        found = sorted((d for d in detector(image) if d.score >= threshold), key=lambda d: -d.score)
        result = match(found, [(box, False) for box in photo.people], threshold)
        extra = len(found) - result["tp"]
        rows.append(
            {
                "photo": photo.name,
                "expected": len(photo.people),
                "crowd": photo.crowd,
                "note": photo.note,
                "found": [{"box": [round(v, 1) for v in d.box], "score": round(d.score, 3)} for d in found],
                "matched": result["tp"],
                "extra": extra,
                "ok": result["fn"] == 0 and (photo.crowd or extra == 0),
            }
        )
        if out is not None:
            save_drawing(image, photo, found, out / f"{Path(photo.name).stem}.png")
    return rows


def save_drawing(image: np.ndarray, photo: Photo, found, path: Path) -> None:
    """The photo with the hand-labelled people (thin yellow) and the detections (green, score)."""
    import cv2

    from fastmetro.io import atomic_write

    canvas = np.ascontiguousarray(image.copy())
    for x, y, w, h in photo.people:
        cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), (255, 220, 0), 1)
    for detection in found:
        x, y, w, h = detection.box
        corner = (round(x), round(y))
        cv2.rectangle(canvas, corner, (round(x + w), round(y + h)), (0, 230, 0), 2)
        text = f"{detection.score:.2f}"
        spot = (corner[0] + 3, max(corner[1] + 16, 16))
        cv2.putText(canvas, text, spot, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, spot, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 230, 0), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        handle.write(encoded.tobytes())


# ---------------------------------------------------------------------------------- time
def time_detector(detector, images: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Median milliseconds per call on each named image (two warm-up calls first)."""
    times = {}
    for name, image in images.items():
        for _ in range(2):
            detector(image)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            detector(image)
            samples.append((time.perf_counter() - start) * 1000.0)
        times[name] = float(np.median(samples))
    return times


# ---------------------------------------------------------------------------------- report
def report(results: dict) -> str:
    """The results as markdown: a header, then one table per part."""
    lines = list(results["header"]) + [""]
    synthetic = results["synthetic"]
    near, far = results["distance"]
    lines += [
        f"**Synthetic crowd scenes**: {synthetic['scenes']} scenes {results['size']}, seed {results['seed']}, "
        f"people {near:g}-{far:g} m away, "
        f"{synthetic['people']} people ({synthetic['ignored']} ignored: hidden, cut or under 24 px); IoU 0.5",
        "",
        "| score >= | precision | recall | true pos. | false pos. | missed | mean IoU of matches |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in synthetic["rows"]:
        lines.append(
            f"| {row['threshold']:.2f} | {row['precision']:.3f} | {row['recall']:.3f} | {row['tp']} | "
            f"{row['fp']} | {row['fn']} | {row['mean_iou']:.3f} |"
        )
    lines += [
        "",
        f"Recall by group (score >= {synthetic['threshold_for_groups']:.2f}):",
        "",
        "| people | counted | found | recall |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, group in synthetic["groups"].items():
        recall = f"{group['found'] / group['people']:.3f}" if group["people"] else "-"
        lines.append(f"| {name} | {group['people']} | {group['found']} | {recall} |")
    lines += [
        "",
        f"**Real photos** (score >= {results['photo_threshold']:.2f}; a labelled person is found at IoU 0.5):",
        "",
        "| photo | a viewer sees | found | matched | as a viewer? | boxes (x, y, w, h) score |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for row in results["photos"]:
        if row.get("missing"):
            lines.append(f"| {row['photo']} | - | - | - | skipped: not installed (apt install opencv-doc) | |")
            continue
        sees = f"{row['expected']}{'+ (crowd behind)' if row['crowd'] else ''}: {row['note']}"
        boxes = "; ".join(f"({', '.join(f'{v:.0f}' for v in d['box'])}) {d['score']:.2f}" for d in row["found"])
        lines.append(
            f"| {row['photo']} | {sees} | {len(row['found'])} | {row['matched']}/{row['expected']} | "
            f"{'yes' if row['ok'] else 'no'} | {boxes or '-'} |"
        )
    lines += [
        "",
        f"**Time per image** (median of {results['runs']} runs, {results['threads']} torch threads):",
        "",
        "| image | ms |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in results["times"].items()]
    return "\n".join(lines)


def header(args: argparse.Namespace) -> list[str]:
    import torch

    from fastmetro.bench.measure import describe_machine

    machine = describe_machine(torch.device("cpu"))
    command = " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
    return [
        f"# Person detection: {args.detector}",
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine['processor']} "
        f"({machine.get('cpu_capability', '?')}), torch {machine['torch']}, {args.threads} threads",
        f"# command: {command}",
    ]


def run(args: argparse.Namespace) -> dict:
    import torch

    from fastmetro.data.synthetic.crowd import render_crowd_scenes, write_labelled_set

    torch.set_num_threads(args.threads)
    width, height = args.size
    started = time.perf_counter()
    scenes = list(
        render_crowd_scenes(
            args.num, seed=args.seed, size=(width, height), people=tuple(args.people), depth_range=tuple(args.distance)
        )
    )
    print(f"[detection] rendered {len(scenes)} scenes in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.write_scenes is not None:
        path = write_labelled_set(scenes[: args.write_count], args.write_scenes)
        print(f"[detection] wrote {min(args.write_count, len(scenes))} scenes and {path}", file=sys.stderr)
    truth = {_key(scene.image): scene.people for scene in scenes}
    threshold = args.threshold if args.threshold is not None else min(args.thresholds)
    detector = load_detector(args.detector, threshold, args.landmarks, args.device, truth, _options(args.option))
    detections = [detector(scene.image) for scene in scenes]
    count = len(scenes[0].people)
    timed = {f"synthetic {width}x{height}, {count} {'person' if count == 1 else 'people'}": scenes[0].image}
    court = read_photo(PHOTOS[1])
    if court is not None:
        timed["basketball1.png 640x480, 2 people"] = court
    return {
        "header": header(args),
        "size": f"{width}x{height}",
        "seed": args.seed,
        "distance": tuple(args.distance),
        "runs": args.runs,
        "threads": args.threads,
        "photo_threshold": threshold,
        "synthetic": evaluate_scenes(scenes, detections, sorted(set(args.thresholds))),
        "photos": evaluate_photos(detector, threshold, args.out),
        "times": time_detector(detector, timed, args.runs),
    }


def _options(texts: list[str]) -> dict:
    """``["presence_threshold=0.5", "flip=false"]`` -> keyword arguments (JSON values, else strings)."""
    from fastmetro.errors import FastMetroError

    options = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise FastMetroError(f"--option {text!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 640x480, got {text!r}") from None
    return width, height


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--detector",
        default="mediapipe",
        help="mediapipe (default), standin (fake: jittered truth), none (whole image), or weights",
    )
    parser.add_argument("--num", type=int, default=200, help="synthetic scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_size, default=(640, 480), help="WxH of the scenes")
    parser.add_argument("--people", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"))
    parser.add_argument(
        "--distance",
        type=float,
        nargs=2,
        default=(2.5, 30.0),
        metavar=("NEAR", "FAR"),
        help="people's distance from the camera, metres, log-uniform (2.5 30: crowds with people "
        "20-40 px tall far away; 2.5 8: group photos)",
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the detector's own threshold and the photos' (default: the lowest of --thresholds)",
    )
    parser.add_argument("--landmarks", default="full", help="MediaPipe landmark network: lite, full, heavy, none")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another MediaPipe detector argument, e.g. presence_threshold=0.5 (repeatable)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per image")
    parser.add_argument("--out", type=Path, default=None, help="save the real photos with their boxes here (PNG)")
    parser.add_argument("--write-scenes", type=Path, default=None, help="write scenes + boxes.json here")
    parser.add_argument("--write-count", type=int, default=20, help="how many scenes --write-scenes writes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from fastmetro.errors import FastMetroError
    from fastmetro.io import atomic_write

    try:
        results = run(args)
    except FastMetroError as error:
        print(f"error: {error}")
        return 2
    print(report(results))  # the markdown report: redirect stdout to keep it (progress goes to stderr)
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
