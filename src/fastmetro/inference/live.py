"""Live video (a webcam): frames one at a time through the tracker and a causal One-Euro filter.

::

    with InferenceRunner(Predictor(detector="mediapipe"), overlay=False) as runner:
        live = LiveTracker(runner)
        for image in camera:                 # (H, W, 3) uint8 RGB
            shown = live.step(image)         # shown.image: the tracks drawn; shown.fps
            shown.people[3].joints_camera    # track 3's smoothed joints, metres

Each frame goes through the same stages as a video file (:func:`~fastmetro.inference.video.track_video`):
the people are found (MediaPipe's detector followed by the landmarks between detections,
:func:`~fastmetro.inference.video.video_boxes`), the network, the
:class:`~fastmetro.inference.tracking.Tracker` with the frame for appearance; then each born
track's camera translation, root-centred joints and vertices go through its own causal
One-Euro filters (a live view cannot look ahead: ``offline`` is not possible here), timed by
the frames' own clock. ``fps`` is the rate at which frames are processed (an exponential mean
over about ten frames), which is what a live view shows.
"""

from __future__ import annotations

import time as clock
from dataclasses import dataclass, field

import cv2
import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.inference.runner import InferenceRunner
from fastmetro.inference.smoothing import OneEuroFilter
from fastmetro.inference.tracking import Tracker, TrackerSettings
from fastmetro.inference.video import DETECT_EVERY, SmoothingSettings, TrackFrame, draw_tracks, video_boxes

FPS_WEIGHT = 0.1  # of the newest frame in the frames-per-second mean
HISTORY = 30  # frames each live track keeps (its velocity needs the last few)


@dataclass
class LiveFrame:
    """One live frame: ``image`` with the tracks drawn and the rate written on it, the tracks
    seen in it ({id: smoothed frame}), people not yet in a born track, the rate (frames/s)."""

    image: np.ndarray
    people: dict[int, TrackFrame]
    tentative: int
    fps: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Filters:
    joints: OneEuroFilter
    vertices: OneEuroFilter
    translation: OneEuroFilter
    last_time: float


class LiveTracker:
    """Frames of a live source, in order (see the module docstring).

    Args:
        runner: the predictor and where the people come from (its overlay is not used).
        smoothing: One-Euro parameters (its mode must be ``causal`` or ``none``).
        tracker: association settings. detect_every: see :func:`~fastmetro.inference.video.video_boxes`.
    """

    def __init__(
        self,
        runner: InferenceRunner,
        smoothing: SmoothingSettings | None = None,
        tracker: TrackerSettings | None = None,
        detect_every: int = DETECT_EVERY,
    ):
        self.smoothing = smoothing or SmoothingSettings("causal")
        if self.smoothing.mode == "offline":
            raise FastMetroError("live video can only be smoothed causally (smoothing 'causal' or 'none')")
        self.runner = runner
        self.runner.boxes = video_boxes(runner.boxes, detect_every)
        self.tracker = Tracker(tracker, keep=HISTORY)
        self.frames = 0
        self.fps = 0.0
        self._filters: dict[int, _Filters] = {}
        self._started: float | None = None
        self._last_step: float | None = None

    def step(self, image: np.ndarray, time: float | None = None) -> LiveFrame:
        """The next frame ((H, W, 3) uint8 RGB) taken at ``time`` seconds (default: now)."""
        now = clock.perf_counter()
        if time is None:
            self._started = now if self._started is None else self._started
            time = now - self._started
        result = self.runner.predict_one(image, name=f"live_{self.frames:06d}", source=f"live#frame{self.frames}")
        ids = self.tracker.update(self.frames, float(time), result.prediction.people, image)
        people = {
            track_id: self._smoothed(track_id, person, float(time))
            for track_id, person in zip(ids, result.prediction.people)
            if track_id is not None
        }
        for gone in set(self._filters) - set(self.tracker.tracks):  # dead tracks' filters
            del self._filters[gone]
        self.frames += 1
        self._rate(now)
        drawn = draw_tracks(image, people)
        cv2.putText(drawn, f"{self.fps:.1f} fps", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        return LiveFrame(drawn, people, sum(i is None for i in ids), self.fps, result.warnings)

    def _smoothed(self, track_id: int, person, time: float) -> TrackFrame:
        s = self.smoothing
        values = (person.joints, person.vertices, person.translation)
        if s.mode == "none":
            return TrackFrame(self.frames, time, person, *(np.asarray(v, dtype=np.float64) for v in values))
        filters = self._filters.get(track_id)
        if filters is None:  # a new track: its filters start from this frame
            make = lambda: OneEuroFilter(s.min_cutoff, s.beta, s.d_cutoff)  # noqa: E731
            filters = self._filters[track_id] = _Filters(make(), make(), make(), time)
        step = max(time - filters.last_time, 1e-3)  # the first call ignores it; frames must move on
        filters.last_time = time
        joints, vertices, translation = (
            f(np.asarray(v), step) for f, v in zip((filters.joints, filters.vertices, filters.translation), values)
        )
        return TrackFrame(self.frames, time, person, joints, vertices, translation)

    def _rate(self, now: float) -> None:
        if self._last_step is not None and now > self._last_step:
            rate = 1.0 / (now - self._last_step)
            self.fps = rate if self.fps == 0 else (1 - FPS_WEIGHT) * self.fps + FPS_WEIGHT * rate
        self._last_step = now


__all__ = ["LiveTracker", "LiveFrame"]
