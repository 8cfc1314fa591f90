"""What the app does for a request, without any web framework: image or video in, files out.

:class:`AppService` turns an upload (a file path and the name the user's file had) plus the
page's settings into an :class:`ImageOutcome` / :class:`VideoOutcome`: the overlay, ``scene.glb``,
attention images, downloads and a message. Every failure becomes a message (bad input: the
one-line :class:`~fastmetro.errors.FastMetroError`; anything else: its type, with the traceback in
the server's log), and no message shows the machine's paths: upload, work and checkpoint folders
are replaced by the user's file name or removed.
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastmetro.app.models import ModelSlot
from fastmetro.errors import FastMetroError
from fastmetro.inference import boxes as box_tools
from fastmetro.inference.images import load_image
from fastmetro.inference.live import LiveTracker
from fastmetro.inference.rigging import Rigger
from fastmetro.inference.runner import InferenceRunner
from fastmetro.inference.video import track_video

log = logging.getLogger("fastmetro.app")

#: Default limits of one request (both can be changed with ``fastmetro app`` options).
MAX_MEGAPIXELS = 40.0
MAX_VIDEO_FRAMES = 300
#: Longest side of the overlay panels (pixels).
IMAGE_MAX_SIDE = 1024


@dataclass
class ImageOutcome:
    """The page's outputs for one image (paths inside the app's work folder)."""

    message: str
    ok: bool
    overlay: Path | None = None
    scene: Path | None = None
    attention: list[tuple[Path, str]] = field(default_factory=list)
    downloads: list[Path] = field(default_factory=list)


@dataclass
class VideoOutcome:
    message: str
    ok: bool
    video: Path | None = None
    downloads: list[Path] = field(default_factory=list)


def safe_stem(name: str) -> str:
    """A file name's stem reduced to characters safe in a folder name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._") or "upload"
    return stem[:64]


def parse_boxes(text: str | None) -> list[tuple[float, float, float, float]] | None:
    """``"x,y,w,h; x,y,w,h"`` (``;`` or new lines between people) -> boxes; empty -> None."""
    parts = [part.strip() for part in re.split(r"[;\n]+", text or "") if part.strip()]
    if not parts:
        return None
    return [box_tools.parse_bbox(part, what=f"box {index + 1}") for index, part in enumerate(parts)]


class AppService:
    """Requests against the app's models (see the module docstring).

    Args:
        slots: the models, by label (the first is the default).
        work_dir: folder for request outputs (the newest ``keep_requests`` are kept).
        detector: person detector used when a request gives no box (None: the whole image).
        max_megapixels: larger images (and video frames) are refused with a message.
        max_video_frames: a video's frames after this many are not processed (the message says so).
    """

    def __init__(
        self,
        slots: list[ModelSlot],
        work_dir: Path,
        detector=None,
        max_megapixels: float = MAX_MEGAPIXELS,
        max_video_frames: int = MAX_VIDEO_FRAMES,
        keep_requests: int = 32,
    ):
        if not slots:
            raise FastMetroError("the app needs at least one checkpoint")
        self.slots = {slot.label: slot for slot in slots}
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.detector = detector
        self.max_pixels = int(max_megapixels * 1e6)
        self.max_video_frames = int(max_video_frames)
        self.keep_requests = keep_requests
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._riggers: dict[int, Rigger] = {}
        # Folders whose names must not reach the page (longest first, so a parent never cuts a child).
        folders = {str(self.work_dir.resolve())} | {str(slot.checkpoint.resolve().parent) for slot in slots}
        folders |= {str(Path(d).resolve()) for slot in slots for d in slot.settings.data_dirs}
        self._private = sorted((f for f in folders if len(f) > 1), key=len, reverse=True)

    # ------------------------------------------------------------------ requests
    def model_info(self, model: str) -> tuple[tuple[str, ...], bool]:
        """(joint names, is a hand model) of a model, loading it if needed."""
        slot = self._slot(model)
        return slot.joint_names, slot.is_hand

    def public(self, message: str) -> str:
        """A message with the machine's folders removed (see :meth:`_public`)."""
        return self._public(message)

    def _failure(self, error: Exception, upload: str, name: str, what: str) -> str:
        """The page's message for a failed request: a FastMetroError's own line (bad input), else
        only the error's type (a bug: the app keeps serving, the traceback goes to the log)."""
        if isinstance(error, FastMetroError):
            return self._public(str(error), upload, name)
        log.exception("%s on %s failed", what, name)
        return f"Internal error while processing {name} ({type(error).__name__}); the server's log has the details."

    def analyse_image(
        self,
        model: str,
        upload: str | None,
        name: str | None,
        boxes_text: str = "",
        joint: str | None = None,
        side: str = "right",
        rig: bool = False,
        flip_test: bool = False,
    ) -> ImageOutcome:
        """One image: meshes, overlay, 3D scene, attention maps for ``joint``, downloads; with ``rig``
        also each person's fitted body-model parameters, rigged ``.glb`` and ``.bvh``; with
        ``flip_test`` each person also run mirrored and averaged (not with ``joint``)."""
        if not upload:
            return ImageOutcome("Upload an image, take a webcam snapshot or pick a sample first.", ok=False)
        name = Path(name or Path(upload).name).name
        try:
            started = time.perf_counter()
            slot = self._slot(model)
            boxes = parse_boxes(boxes_text)
            image = load_image(upload, max_pixels=self.max_pixels, name=name)
            out_dir = self._request_dir()
            if flip_test and joint:
                raise FastMetroError("the flip test and attention maps cannot be combined: choose one")
            result = slot.run(
                self._predict_image, image, boxes, side, joint, out_dir, safe_stem(name), name, rig, flip_test
            )
            seconds = time.perf_counter() - started
        except Exception as error:
            return ImageOutcome(self._failure(error, upload, name, "request"), ok=False)
        log.info("%s: %d person(s) in %.2f s with %s", name, len(result.prediction.people), seconds, slot.label)
        return self._image_outcome(result, slot, name, seconds, upload)

    def analyse_video(
        self,
        model: str,
        upload: str | None,
        name: str | None,
        boxes_text: str = "",
        side: str = "right",
        progress: Callable[[int, int | None], None] | None = None,
        rig: bool = False,
    ) -> VideoOutcome:
        """A video (up to ``max_video_frames`` frames): its people tracked, smoothed and drawn in
        their track's colour as a new video, with the tracks' files."""
        if not upload:
            return VideoOutcome("Upload a video first.", ok=False)
        name = Path(name or Path(upload).name).name
        try:
            started = time.perf_counter()
            slot = self._slot(model)
            boxes = parse_boxes(boxes_text)
            out_dir = self._request_dir()
            summary = slot.run(self._predict_video, Path(upload), name, boxes, side, out_dir, progress, rig)
            seconds = time.perf_counter() - started
        except Exception as error:
            return VideoOutcome(self._failure(error, upload, name, "video request"), ok=False)
        log.info("%s: %d frame(s) in %.2f s with %s", name, summary.frames, seconds, model)
        return self._video_outcome(summary, name, seconds, upload)

    def live_frame(self, model: str, image: np.ndarray | None, session: LiveSession | None, side: str = "right"):
        """A webcam frame of a live session: the people tracked and smoothed causally, drawn,
        with the frames per second. Returns (the frame drawn or None, message, session): the
        session (its tracks) goes on while the model stays the same."""
        if image is None:
            return None, "Start the webcam.", session
        try:
            slot = self._slot(model)
            live = session.tracker if session is not None and session.model == model else None
            live, shown = slot.run(self._live_step, np.asarray(image, dtype=np.uint8), live, side)
        except Exception as error:
            return None, self._failure(error, "", "webcam frame", "live frame"), None
        tracks = ", ".join(f"{track_id}" for track_id in sorted(shown.people)) or "none yet"
        message = f"{shown.fps:.1f} frames/s; tracks: {tracks}" + (
            f" ({shown.tentative} new)" if shown.tentative else ""
        )
        return shown.image, message, LiveSession(model, live)

    # ------------------------------------------------------------------ model thread
    def _runner(self, predictor, pool, boxes, side, **kwargs) -> InferenceRunner:
        source = boxes if boxes is not None else self.detector
        return InferenceRunner(
            predictor, boxes=source, side=side, max_pixels=self.max_pixels, renderer_pool=pool, **kwargs
        )

    def _rigger(self, predictor) -> Rigger:
        """The fitter of a model's topology, made once (runs on the model's thread)."""
        key = id(predictor.topology)
        if key not in self._riggers:
            self._riggers[key] = Rigger(predictor.topology, device=str(predictor.device))
        return self._riggers[key]

    def _predict_image(self, predictor, pool, image, boxes, side, joint, out_dir, stem, name, rig=False, flip=False):
        rigger = self._rigger(predictor) if rig else None
        runner = self._runner(
            predictor,
            pool,
            boxes,
            side,
            out_dir=out_dir,
            max_side=IMAGE_MAX_SIDE,
            attention_joint=joint or None,
            rigger=rigger,
        )
        before, predictor.flip_test = predictor.flip_test, flip  # on this model's own thread: no other request sees it
        try:
            result = runner.predict_one(image, name=stem, source=name)
        finally:
            predictor.flip_test = before
        archive = out_dir / f"fastmetro_{stem}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in result.files:
                bundle.write(path, f"{stem}/{path.name}")
        result.files.append(archive)
        return result

    def _predict_video(self, predictor, pool, path, name, boxes, side, out_dir, progress, rig=False):
        """The video's people tracked and smoothed (:func:`~fastmetro.inference.video.track_video`):
        ``overlay.mp4`` (one colour per track), ``tracks.json`` and each track's frames as JSON."""
        stem = safe_stem(name)
        total, _ = _video_properties(path)
        limit = self.max_video_frames if total is None else min(total, self.max_video_frames)
        runner = self._runner(predictor, pool, boxes, side, overlay=False)
        summary = VideoSummary(out_dir / stem / "overlay.mp4", total=total, limit=limit)

        def on_frame(item, ids):
            summary.frames += 1
            summary.people += len(item.prediction.people)
            summary.warnings.extend(item.warnings)
            if progress is not None:
                progress(summary.frames, limit)

        video = track_video(
            runner, path, "offline", out_dir=out_dir, name=stem, mesh_files=False, on_frame=on_frame,
            max_frames=self.max_video_frames, rigger=self._rigger(predictor) if rig else None,
        )  # fmt: skip
        summary.failures = [failure.message for failure in video.failures]
        summary.tracks = len(video.tracks)
        if summary.frames == 0:
            # The first failure is already a line naming the file (an unreadable video, say).
            raise FastMetroError(summary.failures[0] if summary.failures else f"{name}: no frame (empty video?)")
        archive = out_dir / f"fastmetro_{stem}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for file in video.files:
                bundle.write(file, str(file.relative_to(out_dir)))
        summary.archive = archive
        return summary

    def _live_step(self, predictor, pool, image, live, side):
        if live is None:
            live = LiveTracker(self._runner(predictor, pool, None, side, overlay=False))
        return live, live.step(image)

    # ------------------------------------------------------------------ helpers
    def _slot(self, model: str) -> ModelSlot:
        if model not in self.slots:
            raise FastMetroError(f"unknown model {model!r}: choose one of {', '.join(self.slots)}")
        return self.slots[model]

    def _request_dir(self) -> Path:
        with self._lock:
            number = next(self._counter)
            directory = self.work_dir / f"request_{number:06d}"
            directory.mkdir(parents=True)
            old = sorted(self.work_dir.glob("request_*"))[: -self.keep_requests]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        return directory

    def _public(self, message: str, upload: str | None = None, name: str | None = None) -> str:
        """``message`` without the machine's paths (upload path -> the user's file name)."""
        if upload:
            for form in (str(Path(upload).resolve()), str(upload)):
                message = message.replace(form, name or Path(upload).name)
            for form in (str(Path(upload).resolve().parent), str(Path(upload).parent)):
                if len(form) > 1:
                    message = message.replace(form + "/", "")
        for private in self._private:
            message = message.replace(private + "/", "").replace(private, "")
        return message

    def _image_outcome(self, result, slot: ModelSlot, name: str, seconds: float, upload: str) -> ImageOutcome:
        people = result.prediction.people
        by_name = {path.name: path for path in result.files}
        lines = [
            f"**{name}**: {len(people)} {'person' if len(people) == 1 else 'people'} in {seconds:.1f} s "
            f"with {slot.label}."
        ]
        lines += [f"- warning: {self._public(message, upload, name)}" for message in result.warnings]
        attention = [(by_name[file], _attention_caption(file)) for file in result.attention]
        return ImageOutcome(
            "\n".join(lines),
            ok=True,
            overlay=by_name.get("overlay.png"),
            scene=by_name.get("scene.glb"),
            attention=attention,
            downloads=list(result.files),
        )

    def _video_outcome(self, video: VideoSummary, name: str, seconds: float, upload: str) -> VideoOutcome:
        lines = [
            f"**{name}**: {video.frames} frame(s), {video.people} person detection(s), {video.tracks} track(s) "
            f"in {seconds:.1f} s."
        ]
        if video.total is not None and video.total > video.limit:
            lines.append(f"- only the first {video.limit} of {video.total} frames were processed")
        elif video.total is None and video.frames + len(video.failures) >= video.limit:
            lines.append(f"- at most {video.limit} frames are processed")
        kinds: dict[str, tuple[str, int]] = {}  # one line per kind of warning (numbers aside), with a count
        for warning in video.warnings:
            warning = re.sub(r"#frame\d+", "", warning)
            key = re.sub(r"[-+]?\d[\d.e+-]*", "#", warning)
            first, count = kinds.get(key, (warning, 0))
            kinds[key] = (first, count + 1)
        lines += [
            f"- warning ({count} frame(s)), e.g.: {self._public(first, upload, name)}"
            for first, count in list(kinds.values())[:5]
        ]
        lines += [f"- failed: {self._public(f, upload, name)}" for f in video.failures[:5]]
        assert video.archive is not None  # written with the video
        return VideoOutcome("\n".join(lines), ok=True, video=video.path, downloads=[video.path, video.archive])


@dataclass
class LiveSession:
    """A browser session's live view: the model it tracks with and its tracker."""

    model: str
    tracker: LiveTracker


@dataclass
class VideoSummary:
    path: Path
    total: int | None
    limit: int
    frames: int = 0
    people: int = 0
    tracks: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    archive: Path | None = None


def _attention_caption(file_name: str) -> str:
    # attention_{cross|self}_person_XX_<joint>.png
    parts = Path(file_name).stem.split("_")
    kind = "cross-attention to the image" if parts[1] == "cross" else "self-attention to the mesh"
    return f"person {int(parts[3])}, {'_'.join(parts[4:])}: {kind}"


def _video_properties(path: Path) -> tuple[int | None, float]:
    """(frame count or None, frames per second) from the container, without decoding."""
    import imageio.v3 as iio

    try:
        meta = iio.immeta(path, plugin="pyav")
        fps = float(meta.get("fps") or 25.0)
    except Exception:  # unreadable here: iter_video reports it with a proper message
        return None, 25.0
    try:
        n_images = iio.improps(path, plugin="pyav").n_images
        total = None if n_images is None else int(n_images)
    except Exception:
        total = None
    fps = fps if np.isfinite(fps) and 1.0 <= fps <= 240.0 else 25.0
    return (total if total and total > 0 else None), fps


__all__ = [
    "AppService",
    "ImageOutcome",
    "VideoOutcome",
    "parse_boxes",
    "safe_stem",
    "MAX_MEGAPIXELS",
    "MAX_VIDEO_FRAMES",
]
