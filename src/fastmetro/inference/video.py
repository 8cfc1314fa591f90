"""A video as tracks: people with stable ids across frames, smoothed, written per track.

::

    from fastmetro.inference import InferenceRunner, Predictor
    from fastmetro.inference.video import track_video

    predictor = Predictor()
    with InferenceRunner(predictor, boxes=detector, overlay=False) as runner:
        video = track_video(runner, "clip.mp4", smooth="offline", out_dir="results")
    video.tracks[3][0].joints_camera        # (K, 3) metres, smoothed
    video.tracks[3][0].raw.joints_camera    # the network's own per-frame result

Frames go through the runner (detection, batching, the network) one after another, the people
of each frame to a :class:`~fastmetro.inference.tracking.Tracker`; once the clip is read, each
born track's camera translation, root-centred joints and root-centred vertices are smoothed
(:mod:`fastmetro.inference.smoothing`). Written in ``out_dir/<video>/``:

* ``track_03/frame_000123.json``: the person record of :func:`~fastmetro.inference.outputs.person_record`
  (the raw per-frame values) plus ``track_id``, ``frame``, ``time`` and ``smoothed`` (the
  smoothed joints, camera joints and translation, the mode and filter parameters);
* ``track_03/frame_000123.obj``: the smoothed mesh in camera coordinates (``mesh_files``);
* ``tracks.json``: the tracks, their frames, the settings; ``overlay.mp4``: the frames with
  each track's mesh vertices, box and id drawn in its own colour (``overlay``).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.inference import images as image_io
from fastmetro.inference import outputs
from fastmetro.inference.boxes import BoxSource, DetectorBoxes
from fastmetro.inference.detector import MediaPipeDetector
from fastmetro.inference.images import Frame
from fastmetro.inference.predictor import PersonPrediction
from fastmetro.inference.rigging import write_track_rigs
from fastmetro.inference.runner import Failure, InferenceRunner
from fastmetro.inference.smoothing import MODES, smooth_sequence
from fastmetro.inference.tracking import Tracker, TrackerSettings

# Saturated colours (RGB 0..255) for the overlay video, one per track id.
TRACK_COLORS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


#: MediaPipe's detector at least every N frames of a video; people followed in between.
DETECT_EVERY = 5


def track_color(track_id: int) -> tuple[int, int, int]:
    return TRACK_COLORS[track_id % len(TRACK_COLORS)]


@dataclass(frozen=True)
class SmoothingSettings:
    """``mode``: none, causal or offline; One-Euro ``min_cutoff`` (Hz), ``beta`` (s/m), ``d_cutoff`` (Hz)."""

    mode: str = "offline"
    min_cutoff: float = 1.0
    beta: float = 0.5
    d_cutoff: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise FastMetroError(f"smoothing must be one of {MODES}, got {self.mode!r}")


@dataclass
class TrackFrame:
    """One frame of a track: ``raw`` (the network's result) and the smoothed root-centred
    ``joints``, ``vertices`` and camera ``translation`` (metres)."""

    frame: int
    time: float
    raw: PersonPrediction
    joints: np.ndarray
    vertices: np.ndarray
    translation: np.ndarray

    @property
    def joints_camera(self) -> np.ndarray:
        return self.joints + self.translation

    @property
    def vertices_camera(self) -> np.ndarray:
        return self.vertices + self.translation


@dataclass
class VideoTracks:
    """A tracked video: ``tracks`` {id: frames in order}, the frame count, fps, failures, files."""

    name: str
    source: str
    frames: int
    fps: float
    image_size: tuple[int, int] | None
    tracks: dict[int, list[TrackFrame]]
    smoothing: SmoothingSettings
    failures: list[Failure] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def by_frame(self) -> dict[int, dict[int, TrackFrame]]:
        """{frame: {track id: its frame}} of the tracks seen at each frame."""
        found: dict[int, dict[int, TrackFrame]] = {}
        for track_id, items in self.tracks.items():
            for item in items:
                found.setdefault(item.frame, {})[track_id] = item
        return found


def video_fps(path: Path) -> float:
    """The container's frames per second (25 when it does not say)."""
    import imageio.v3 as iio  # imageio: the video reader of fastmetro.inference.images

    try:
        fps = float(iio.immeta(path, plugin="pyav").get("fps") or 25.0)
    except Exception:  # unreadable here: iter_video reports it with a proper message
        return 25.0
    return fps if np.isfinite(fps) and 1.0 <= fps <= 240.0 else 25.0


def smooth_track(items, settings: SmoothingSettings) -> list[TrackFrame]:
    """A track's :class:`~fastmetro.inference.tracking.TrackedPerson` history, smoothed."""
    times = [item.time for item in items]

    def smooth(values: list[np.ndarray]) -> np.ndarray:
        return smooth_sequence(values, times, settings.mode, settings.min_cutoff, settings.beta, settings.d_cutoff)

    joints = smooth([item.person.joints for item in items])
    vertices = smooth([item.person.vertices for item in items])
    translation = smooth([item.person.translation for item in items])
    return [
        TrackFrame(item.frame, item.time, item.person, joints[i], vertices[i], translation[i])
        for i, item in enumerate(items)
    ]


def video_boxes(boxes: BoxSource, detect_every: int = DETECT_EVERY) -> BoxSource:
    """The box source for one video's frames in order: with MediaPipe's body detector, people
    are followed by their landmarks between detections every ``detect_every`` frames
    (:meth:`~fastmetro.inference.detector.MediaPipeDetector.following`); any other source, or
    ``detect_every`` 1, is used as it is."""
    detector = getattr(boxes, "detector", None)
    if detect_every > 1 and isinstance(detector, MediaPipeDetector) and detector.can_follow():
        assert isinstance(boxes, DetectorBoxes)  # the source that holds a detector
        return DetectorBoxes(detector.following(detect_every), side=boxes.side)
    return boxes


def track_frames(
    runner: InferenceRunner,
    frames: Iterable[Frame],
    fps: float,
    tracker: Tracker | None = None,
    on_frame: Callable | None = None,
    detect_every: int = DETECT_EVERY,
) -> tuple[Tracker, int, tuple[int, int] | None, list[Failure]]:
    """Run one video's ``frames`` (in order) through ``runner`` and ``tracker``;
    ``on_frame(result, ids)`` per frame. ``detect_every``: see :func:`video_boxes`."""
    tracker = tracker or Tracker()
    count, size, failures = 0, None, []
    boxes = runner.boxes
    runner.boxes = video_boxes(boxes, detect_every)
    try:
        for position, item in enumerate(runner.iter_results(frames)):
            if isinstance(item, Failure):
                failures.append(item)
                continue
            index = item.index if item.index is not None else position
            ids = tracker.update(index, index / fps, item.prediction.people, item.image)
            count = max(count, index + 1)
            size = item.prediction.image_size
            if on_frame is not None:
                on_frame(item, ids)
    finally:
        runner.boxes = boxes
    return tracker, count, size, failures


def track_video(
    runner: InferenceRunner,
    path: str | os.PathLike,
    smooth: str | SmoothingSettings = "offline",
    tracker: TrackerSettings | None = None,
    out_dir: str | os.PathLike | None = None,
    name: str | None = None,
    overlay: bool = True,
    mesh_files: bool = True,
    on_frame: Callable | None = None,
    detect_every: int = DETECT_EVERY,
    max_frames: int | None = None,
    rigger=None,
) -> VideoTracks:
    """Track the people of a video file (see the module docstring).

    Args:
        runner: the predictor and boxes (its own ``out_dir`` and ``overlay`` are not used).
        smooth: a mode of :data:`~fastmetro.inference.smoothing.MODES` or the full settings.
        tracker: the association settings. name: the output folder (default: the file's stem).
        on_frame: ``on_frame(ImageResult, track ids)`` as each frame is done (progress).
        detect_every: MediaPipe's body detector at least every N frames, people followed by
            their landmarks in between (:func:`video_boxes`; 1: the detector on every frame).
        max_frames: the first N frames only (None: all).
        rigger: a :class:`~fastmetro.inference.rigging.Rigger`: each track's body-model fit as
            an animated rig (``track_XX/rig.glb``, ``motion.bvh``, ``rig.json``, ``tracks_rig.glb``).
    """
    import time as clock

    path = Path(path)
    settings = smooth if isinstance(smooth, SmoothingSettings) else SmoothingSettings(mode=smooth)
    name = path.stem if name is None else name
    fps = video_fps(path)
    started = clock.perf_counter()
    failures: list[Failure] = []

    def frames():
        try:
            yield from itertools.islice(image_io.iter_video(path, name), max_frames)
        except FastMetroError as error:  # a corrupt stream: the frames before it stand
            failures.append(Failure(str(path), str(error)))

    tracked, count, size, failed = track_frames(runner, frames(), fps, Tracker(tracker), on_frame, detect_every)
    tracks = {track_id: smooth_track(track.history, settings) for track_id, track in sorted(tracked.tracks.items())}
    result = VideoTracks(
        name, str(path), count, fps, size, tracks, settings, failed + failures, seconds=clock.perf_counter() - started
    )
    if out_dir is not None:
        directory = Path(out_dir) / name
        result.files += write_tracks(directory, result, runner.predictor.joint_names, tracked.settings, mesh_files)
        if overlay and count:
            result.files.append(write_overlay_video(directory / "overlay.mp4", path, result))
        if rigger is not None:
            result.files += write_track_rigs(directory, rigger, result)
    return result


def frame_record(
    item: TrackFrame, track_id: int, joint_names, source: str, image_size, settings: SmoothingSettings
) -> dict:
    """The JSON of one track frame: the raw person record plus the smoothed values."""
    record = outputs.person_record(item.raw, joint_names, f"{source}#frame{item.frame}", image_size)
    return {
        "track_id": int(track_id),
        "frame": int(item.frame),
        "time": round(float(item.time), 6),
        **record,
        "smoothed": {
            **asdict(settings),
            "joints_3d": item.joints.round(6).tolist(),
            "joints_3d_camera": item.joints_camera.round(6).tolist(),
            "translation": item.translation.round(6).tolist(),
            "units": "metres; min_cutoff, d_cutoff Hz, beta s/m; the values outside `smoothed` are the raw frame's",
        },
    }


def write_tracks(
    directory: Path, video: VideoTracks, joint_names, tracker: TrackerSettings, mesh_files: bool = True
) -> list[Path]:
    """``track_XX/frame_XXXXXX.{json,obj}`` and ``tracks.json`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for track_id, items in video.tracks.items():
        folder = directory / f"track_{track_id:02d}"
        folder.mkdir(exist_ok=True)
        for item in items:
            stem = folder / f"frame_{item.frame:06d}"
            record = frame_record(item, track_id, joint_names, video.source, video.image_size, video.smoothing)
            written.append(outputs.write_bytes(stem.with_suffix(".json"), json.dumps(record) + "\n"))
            if mesh_files:
                written.append(outputs.write_mesh(stem.with_suffix(".obj"), item.vertices_camera, item.raw.faces))
    summary = {
        "video": video.source,
        "frames": video.frames,
        "fps": video.fps,
        "image_size": None if video.image_size is None else list(video.image_size),
        "tracks": {
            f"track_{track_id:02d}": {"id": track_id, "frames": [item.frame for item in items]}
            for track_id, items in video.tracks.items()
        },
        "smoothing": asdict(video.smoothing),
        "tracker": asdict(tracker),
        "failures": [failure.message for failure in video.failures],
    }
    written.append(outputs.write_bytes(directory / "tracks.json", json.dumps(summary, indent=1) + "\n"))
    return written


def draw_tracks(image: np.ndarray, people: dict[int, TrackFrame], point_step: int = 3) -> np.ndarray:
    """``image`` with each track's (smoothed) mesh vertices, raw box and id in its colour."""
    canvas = np.ascontiguousarray(image.copy())
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    for track_id, item in sorted(people.items()):
        color = track_color(track_id)
        vertices = item.vertices_camera[::point_step]
        intrinsics = np.asarray(item.raw.intrinsics)
        depth = np.maximum(vertices[:, 2:3], 1e-6)
        pixels = (vertices[:, :2] / depth) @ intrinsics[:2, :2].T + intrinsics[:2, 2]
        pixels = np.nan_to_num(pixels, nan=-1.0, posinf=-1.0, neginf=-1.0).round().astype(np.int64)
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        columns, rows = pixels[inside].T
        canvas[rows, columns] = (0.35 * canvas[rows, columns] + 0.65 * np.asarray(color)).astype(np.uint8)
        x, y, w, h = (int(round(v)) for v in item.raw.box)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, thickness)
        cv2.putText(
            canvas, f"{track_id}", (x, max(10, y - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, color, thickness
        )
    return canvas


class VideoWriter:
    """H.264 MP4 through imageio's PyAV plugin: even frame sizes (as yuv420p needs), every frame
    the size of the first (a frame of another size is cropped or padded with black)."""

    def __init__(self, path: Path, fps: float):
        import imageio.v3 as iio  # imageio: the video reader of fastmetro.inference.images

        self._file = iio.imopen(path, "w", plugin="pyav")
        self._file.init_video_stream("libx264", fps=fps)
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._size is None:
            height, width = frame.shape[:2]
            self._size = (height - height % 2, width - width % 2)
        height, width = self._size
        frame = np.ascontiguousarray(frame[:height, :width])
        if frame.shape[:2] != (height, width):
            canvas = np.zeros((height, width, 3), np.uint8)
            canvas[: frame.shape[0], : frame.shape[1]] = frame
            frame = canvas
        self._file.write_frame(frame)

    def close(self) -> None:
        self._file.close()


def write_overlay_video(path: Path, source: Path, video: VideoTracks) -> Path:
    """``overlay.mp4``: the video's frames read again with :func:`draw_tracks` on each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = VideoWriter(path, video.fps)
    people = video.by_frame()
    try:
        for frame in image_io.iter_video(source, video.name):
            assert frame.index is not None  # iter_video numbers every frame
            if frame.index >= video.frames:
                break  # past the frames tracked (a frame limit)
            writer.write(draw_tracks(frame.load(), people.get(frame.index, {})))
    except FastMetroError:
        pass  # a corrupt tail: the frames before it are written (the failure is in video.failures)
    finally:
        writer.close()
    return path


__all__ = [
    "VideoTracks",
    "TrackFrame",
    "SmoothingSettings",
    "track_video",
    "track_frames",
    "video_boxes",
    "DETECT_EVERY",
    "smooth_track",
    "draw_tracks",
    "write_tracks",
    "write_overlay_video",
    "track_color",
    "VideoWriter",
]
