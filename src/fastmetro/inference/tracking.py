"""People across video frames: tracks with stable ids, by Hungarian assignment.

Per frame, the people found (a detector's or the user's boxes, then the network) are matched to
the live tracks by :func:`scipy.optimize.linear_sum_assignment` on a cost per (track, person)::

    cost = iou_weight * (1 - IoU(predicted box, box))
         + joint_weight * min(1, mean |predicted joints - joints| / joint_scale)

where the predicted box and the predicted 3D joints (camera space, metres) are the track's last
ones moved on by its last velocity (constant speed over the frames since it was seen). A pair
costing more than ``max_cost`` is not matched. A person matched to no track starts a tentative
track; it is *born* (gets an id, counting from 0) once it has been matched in ``birth``
consecutive frames, and is dropped otherwise. A born track that goes unmatched for more than
``patience`` frames dies; its id is never given again.

:class:`Tracker` works frame by frame (live video: ids appear ``birth - 1`` frames after the
person does); :attr:`Tracker.tracks` keeps every born track's whole history, the frames
before its birth included, for whole clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from fastmetro.errors import FastMetroError
from fastmetro.inference.predictor import PersonPrediction


def box_iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    width = min(ax + aw, bx + bw) - max(ax, bx)
    height = min(ay + ah, by + bh) - max(ay, by)
    inter = max(0.0, width) * max(0.0, height)
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class TrackedPerson:
    """One frame of a track: the frame number, its time (s) and the network's result."""

    frame: int
    time: float
    person: PersonPrediction


@dataclass
class Track:
    """A person across frames. ``track_id`` is None until the track is born."""

    track_id: int | None
    history: list[TrackedPerson] = field(default_factory=list)
    hits: int = 0  # consecutive frames matched
    missed: int = 0  # consecutive frames unmatched

    @property
    def last(self) -> TrackedPerson:
        return self.history[-1]

    def predicted(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """The box (4,) and camera-space joints (K, 3) expected at ``frame`` (constant speed)."""
        last = self.last
        box = np.asarray(last.person.box, dtype=np.float64)
        joints = np.asarray(last.person.joints_camera, dtype=np.float64)
        if len(self.history) >= 2:
            before = self.history[-2]
            gap = max(1, last.frame - before.frame)
            ahead = (frame - last.frame) / gap
            box = box + ahead * (box - np.asarray(before.person.box, dtype=np.float64))
            box[2:] = np.maximum(box[2:], 1.0)
            joints = joints + ahead * (joints - np.asarray(before.person.joints_camera, dtype=np.float64))
        return box, joints


@dataclass
class TrackerSettings:
    """See the module docstring. ``joint_scale``: metres; ``birth``, ``patience``: frames."""

    iou_weight: float = 1.0
    joint_weight: float = 1.0
    joint_scale: float = 1.0
    max_cost: float = 1.5
    birth: int = 3
    patience: int = 10

    def __post_init__(self):
        for name in ("iou_weight", "joint_weight"):
            if not getattr(self, name) >= 0:
                raise FastMetroError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("joint_scale", "max_cost"):
            if not getattr(self, name) > 0:
                raise FastMetroError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("birth", "patience"):
            value = getattr(self, name)
            if int(value) != value or value < (1 if name == "birth" else 0):
                raise FastMetroError(f"{name} must be an integer >= {1 if name == 'birth' else 0}, got {value!r}")


class Tracker:
    """Frame-by-frame tracking (see the module docstring).

    ``update(frame, time, people)`` returns, per person of the frame in order, its track id
    (None while its track is not born yet).
    """

    def __init__(self, settings: TrackerSettings | None = None, **options):
        if settings is not None and options:
            raise FastMetroError("Tracker takes settings= or keyword options, not both")
        self.settings = settings or TrackerSettings(**options)
        self.live: list[Track] = []
        self.tracks: dict[int, Track] = {}  # every born track, by id
        self._next_id = 0

    def cost_matrix(self, frame: int, people: Sequence[PersonPrediction]) -> np.ndarray:
        """(live tracks, people) costs (``inf`` where a pair cannot match)."""
        s = self.settings
        costs = np.full((len(self.live), len(people)), np.inf)
        for row, track in enumerate(self.live):
            box, joints = track.predicted(frame)
            for column, person in enumerate(people):
                overlap = box_iou(box, person.box)
                distance = float(np.linalg.norm(np.asarray(person.joints_camera) - joints, axis=-1).mean())
                cost = s.iou_weight * (1.0 - overlap) + s.joint_weight * min(1.0, distance / s.joint_scale)
                if cost <= s.max_cost:
                    costs[row, column] = cost
        return costs

    def update(self, frame: int, time: float, people: Sequence[PersonPrediction]) -> list[int | None]:
        s = self.settings
        costs = self.cost_matrix(frame, people)
        matched: dict[int, int] = {}  # person -> live track row
        if costs.size:
            finite = np.where(np.isfinite(costs), costs, 1e9)
            rows, columns = linear_sum_assignment(finite)
            matched = {int(c): int(r) for r, c in zip(rows, columns) if np.isfinite(costs[r, c])}
        ids: list[int | None] = []
        used: set[int] = set()
        for column, person in enumerate(people):
            if column in matched:
                track = self.live[matched[column]]
                used.add(matched[column])
                track.hits += 1
                track.missed = 0
            else:
                track = Track(None, hits=1)
                self.live.append(track)
                used.add(len(self.live) - 1)
            track.history.append(TrackedPerson(int(frame), float(time), person))
            if track.track_id is None and track.hits >= s.birth:
                track.track_id = self._next_id
                self.tracks[track.track_id] = track
                self._next_id += 1
            ids.append(track.track_id)
        survivors = []
        for row, track in enumerate(self.live):
            if row not in used:
                track.hits = 0
                track.missed += 1
                if track.track_id is None or track.missed > s.patience:
                    continue  # a tentative track must be seen in consecutive frames; a born one has patience
            survivors.append(track)
        self.live = survivors
        return ids


__all__ = ["Tracker", "TrackerSettings", "Track", "TrackedPerson", "box_iou"]
