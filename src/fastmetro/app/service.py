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
from fastmetro.inference.images import iter_video, load_image
from fastmetro.inference.runner import Failure, InferenceRunner

log = logging.getLogger("fastmetro.app")

#: Default limits of one request (both can be changed with ``fastmetro app`` options).
MAX_MEGAPIXELS = 40.0
MAX_VIDEO_FRAMES = 300
#: Longest side of the overlay panels (image) and of each video frame (pixels).
IMAGE_MAX_SIDE = 1024
VIDEO_MAX_SIDE = 640


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
    ) -> ImageOutcome:
        """One image: meshes, overlay, 3D scene, attention maps for ``joint``, downloads."""
        if not upload:
            return ImageOutcome("Upload an image, take a webcam snapshot or pick a sample first.", ok=False)
        name = Path(name or Path(upload).name).name
        try:
            started = time.perf_counter()
            slot = self._slot(model)
            boxes = parse_boxes(boxes_text)
            image = load_image(upload, max_pixels=self.max_pixels, name=name)
            out_dir = self._request_dir()
            result = slot.run(self._predict_image, image, boxes, side, joint, out_dir, safe_stem(name), name)
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
    ) -> VideoOutcome:
        """A video: meshes drawn over each frame (up to ``max_video_frames``) as a new video."""
        if not upload:
            return VideoOutcome("Upload a video first.", ok=False)
        name = Path(name or Path(upload).name).name
        try:
            started = time.perf_counter()
            slot = self._slot(model)
            boxes = parse_boxes(boxes_text)
            out_dir = self._request_dir()
            summary = slot.run(self._predict_video, Path(upload), name, boxes, side, out_dir, progress)
            seconds = time.perf_counter() - started
        except Exception as error:
            return VideoOutcome(self._failure(error, upload, name, "video request"), ok=False)
        log.info("%s: %d frame(s) in %.2f s with %s", name, summary.frames, seconds, model)
        return self._video_outcome(summary, name, seconds, upload)

    # ------------------------------------------------------------------ model thread
    def _runner(self, predictor, pool, boxes, side, **kwargs) -> InferenceRunner:
        source = boxes if boxes is not None else self.detector
        return InferenceRunner(
            predictor, boxes=source, side=side, max_pixels=self.max_pixels, renderer_pool=pool, **kwargs
        )

    def _predict_image(self, predictor, pool, image, boxes, side, joint, out_dir, stem, name):
        runner = self._runner(
            predictor, pool, boxes, side, out_dir=out_dir, max_side=IMAGE_MAX_SIDE, attention_joint=joint or None
        )
        result = runner.predict_one(image, name=stem, source=name)
        archive = out_dir / f"fastmetro_{stem}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in result.files:
                bundle.write(path, f"{stem}/{path.name}")
        result.files.append(archive)
        return result

    def _predict_video(self, predictor, pool, path, name, boxes, side, out_dir, progress):
        stem = safe_stem(name)
        total, fps = _video_properties(path)
        limit = self.max_video_frames if total is None else min(total, self.max_video_frames)
        runner = self._runner(
            predictor, pool, boxes, side, out_dir=out_dir / stem, max_side=VIDEO_MAX_SIDE, mesh_files=False
        )
        frames = itertools.islice(iter_video(path, name=stem, label=name), self.max_video_frames)
        video = VideoSummary(out_dir / f"{stem}_meshes.mp4", total=total, limit=limit)
        writer = None
        try:
            for item in runner.iter_results(frames):
                if isinstance(item, Failure):
                    video.failures.append(item.message)
                else:
                    writer = writer or _VideoWriter(video.path, fps)
                    width = item.overlay.shape[1] // 3  # [input | meshes over it | side view]
                    writer.write(item.overlay[:, width : 2 * width])
                    video.frames += 1
                    video.people += len(item.prediction.people)
                    video.warnings.extend(item.warnings)
                    video.files.extend(item.files)
                if progress is not None:
                    progress(video.frames + len(video.failures), limit)
        except FastMetroError as error:  # a stream that breaks part-way: keep the frames before it
            if video.frames == 0:
                raise
            video.failures.append(str(error))
        finally:
            if writer is not None:
                writer.close()
        if video.frames == 0:
            raise FastMetroError(
                f"{name}: no frame could be processed"
                + (f" ({video.failures[0]})" if video.failures else " (empty video?)")
            )
        archive = out_dir / f"fastmetro_{stem}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.write(video.path, f"{stem}/{video.path.name}")
            for file in video.files:
                bundle.write(file, f"{stem}/{file.parent.name}/{file.name}")
        video.archive = archive
        return video

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
        lines = [f"**{name}**: {video.frames} frame(s), {video.people} person detection(s) in {seconds:.1f} s."]
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
class VideoSummary:
    path: Path
    total: int | None
    limit: int
    frames: int = 0
    people: int = 0
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


class _VideoWriter:
    """H.264 MP4 through imageio's PyAV plugin (even frame sizes, as yuv420p needs)."""

    def __init__(self, path: Path, fps: float):
        import imageio.v3 as iio

        self._file = iio.imopen(path, "w", plugin="pyav")
        self._file.init_video_stream("libx264", fps=fps)
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._size is None:
            height, width = frame.shape[:2]
            self._size = (height - height % 2, width - width % 2)
        height, width = self._size
        frame = np.ascontiguousarray(frame[:height, :width])
        if frame.shape[:2] != (height, width):  # frames of another size: pad/crop to the first
            canvas = np.zeros((height, width, 3), np.uint8)
            canvas[: frame.shape[0], : frame.shape[1]] = frame[:height, :width]
            frame = canvas
        self._file.write_frame(frame)

    def close(self) -> None:
        self._file.close()


__all__ = [
    "AppService",
    "ImageOutcome",
    "VideoOutcome",
    "parse_boxes",
    "safe_stem",
    "MAX_MEGAPIXELS",
    "MAX_VIDEO_FRAMES",
]
