"""People across video frames: tracks with stable ids, by Hungarian assignment.

Per frame, the people found (a detector's or the user's boxes, then the network) are matched to
the live tracks by :func:`scipy.optimize.linear_sum_assignment` on a cost per (track, person)::

    cost = iou_weight * (1 - IoU(predicted box, box))
         + joint_weight * min(1, mean |predicted joints - joints| / joint_scale)

where the predicted box and 3D joints (camera space, metres) are the track's last ones moved on
at its mean velocity over the last ``velocity_frames`` frames (the box's centre moves, its size
stays). A pair costing more than ``max_cost`` is not matched.

A track unseen in the last frame gets a second chance with the people left over: its
appearance (:mod:`~fastmetro.inference.appearance`, colour histograms averaged over the frames
where its box overlapped nobody) within ``reid_appearance`` of theirs, their box centre within
``reid_distance`` heights of where the track would be (this needs the frame: ``update(...,
image=)``). So a person hidden by another for a while keeps their id when they come out.

A person matched to no track starts a tentative track; it is *born* (gets an id, counting from
0) once it has been matched in ``birth`` consecutive frames, and is dropped otherwise. A born
track that goes unmatched for more than ``patience`` frames dies; its id is never given again.

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
from fastmetro.inference.appearance import appearance, appearance_distance
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
    appearance: np.ndarray | None = field(default=None, repr=False)  # running mean colour histograms

    def look(self, seen: np.ndarray | None, rate: float) -> None:
        """Fold a frame's appearance into the track's (an exponential mean at ``rate``)."""
        if seen is not None:
            self.appearance = seen.copy() if self.appearance is None else (1 - rate) * self.appearance + rate * seen

    @property
    def last(self) -> TrackedPerson:
        return self.history[-1]

    def predicted(self, frame: int, velocity_frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The box (4,) and camera-space joints (K, 3) expected at ``frame`` (constant speed, the
        mean over the last ``velocity_frames`` frames)."""
        last = self.last
        box = np.asarray(last.person.box, dtype=np.float64)
        joints = np.asarray(last.person.joints_camera, dtype=np.float64)
        if len(self.history) >= 2:
            # The mean velocity over the last few frames: one frame's difference is mostly noise,
            # and a person hidden for a second is found again where their walk would take them.
            before = next(i for i in self.history[-1 - velocity_frames :] if last.frame - i.frame <= velocity_frames)
            if before is last:
                before = self.history[-2]
            gap = max(1, last.frame - before.frame)
            ahead = (frame - last.frame) / gap
            # The centre moves on; the size stays the last one (its changes are mostly noise).
            box[:2] += ahead * (_centre(box) - _centre(np.asarray(before.person.box, dtype=np.float64)))
            joints = joints + ahead * (joints - np.asarray(before.person.joints_camera, dtype=np.float64))
        return box, joints


@dataclass
class TrackerSettings:
    """See the module docstring. ``joint_scale``: metres; ``birth``, ``patience``,
    ``velocity_frames``: frames; ``reid_appearance``: a Bhattacharyya distance (0..1);
    ``reid_distance``: box heights; ``appearance_rate``: the weight of a new frame's colours."""

    iou_weight: float = 1.0
    joint_weight: float = 1.0
    joint_scale: float = 1.0
    max_cost: float = 1.5
    birth: int = 3
    patience: int = 30
    velocity_frames: int = 5
    reid_appearance: float = 0.4
    reid_distance: float = 2.0
    appearance_rate: float = 0.2

    def __post_init__(self):
        for name in ("iou_weight", "joint_weight"):
            if not getattr(self, name) >= 0:
                raise FastMetroError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("reid_appearance", "reid_distance", "appearance_rate"):
            if not 0 <= getattr(self, name) <= (1 if name != "reid_distance" else np.inf):
                raise FastMetroError(f"{name} out of range: {getattr(self, name)!r}")
        for name in ("joint_scale", "max_cost"):
            if not getattr(self, name) > 0:
                raise FastMetroError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name, low in (("birth", 1), ("patience", 0), ("velocity_frames", 1)):
            value = getattr(self, name)
            if int(value) != value or value < low:
                raise FastMetroError(f"{name} must be an integer >= {low}, got {value!r}")


class Tracker:
    """Frame-by-frame tracking (see the module docstring).

    ``update(frame, time, people)`` returns, per person of the frame in order, its track id
    (None while its track is not born yet).
    """

    def __init__(self, settings: TrackerSettings | None = None, keep: int | None = None, **options):
        """``keep``: None keeps every track's whole history (clips); N keeps each live track's
        last N frames and forgets dead tracks (live video: bounded memory)."""
        if settings is not None and options:
            raise FastMetroError("Tracker takes settings= or keyword options, not both")
        self.settings = settings or TrackerSettings(**options)
        if keep is not None and not (int(keep) == keep and keep > self.settings.velocity_frames):
            raise FastMetroError(f"keep must be an integer > velocity_frames, got {keep!r}")
        self.keep = keep
        self.live: list[Track] = []
        self.tracks: dict[int, Track] = {}  # every born track, by id
        self._next_id = 0

    def cost_matrix(self, frame: int, people: Sequence[PersonPrediction]) -> np.ndarray:
        """(live tracks, people) costs (``inf`` where a pair cannot match)."""
        s = self.settings
        costs = np.full((len(self.live), len(people)), np.inf)
        for row, track in enumerate(self.live):
            box, joints = track.predicted(frame, s.velocity_frames)
            for column, person in enumerate(people):
                overlap = box_iou(box, person.box)
                distance = float(np.linalg.norm(np.asarray(person.joints_camera) - joints, axis=-1).mean())
                cost = s.iou_weight * (1.0 - overlap) + s.joint_weight * min(1.0, distance / s.joint_scale)
                if cost <= s.max_cost:
                    costs[row, column] = cost
        return costs

    def reid_cost_matrix(
        self, frame: int, people: Sequence[PersonPrediction], looks: Sequence[np.ndarray | None]
    ) -> np.ndarray:
        """(live tracks, people) costs of finding a lost track again by its appearance
        (``inf`` where it cannot be): tracks unseen in the last frame with an appearance, people
        whose colours are within ``reid_appearance`` and who are within ``reid_distance``
        predicted heights of where the track would be, at a height ratio within 1/2..2."""
        s = self.settings
        costs = np.full((len(self.live), len(people)), np.inf)
        for row, track in enumerate(self.live):
            if track.track_id is None or track.missed == 0 or track.appearance is None:
                continue
            box, _ = track.predicted(frame, s.velocity_frames)
            centre, height = box[:2] + box[2:] / 2, box[3]
            for column, (person, look) in enumerate(zip(people, looks)):
                if look is None:
                    continue
                colours = appearance_distance(track.appearance, look)
                x, y, w, h = (float(v) for v in person.box)
                distance = float(np.hypot(x + w / 2 - centre[0], y + h / 2 - centre[1])) / height
                if colours <= s.reid_appearance and distance <= s.reid_distance and 0.5 <= h / height <= 2.0:
                    costs[row, column] = colours / s.reid_appearance + distance / s.reid_distance
        return costs

    def update(
        self, frame: int, time: float, people: Sequence[PersonPrediction], image: np.ndarray | None = None
    ) -> list[int | None]:
        """Match a frame's ``people`` to the tracks; returns each one's track id (None while
        tentative). ``image``: the frame ((H, W, 3) uint8 RGB), for finding lost tracks again by
        their appearance (:mod:`~fastmetro.inference.appearance`); without it, motion only."""
        s = self.settings
        looks = [None if image is None else appearance(image, person.box) for person in people]
        matched = _assign(self.cost_matrix(frame, people))  # person -> live track row
        lost = [row for row in range(len(self.live)) if row not in matched.values()]
        unmatched = [column for column in range(len(people)) if column not in matched]
        if lost and unmatched and image is not None:  # second chance: lost tracks by appearance
            costs = self.reid_cost_matrix(frame, people, looks)[np.ix_(lost, unmatched)]
            for column, row in _assign(costs).items():
                matched[unmatched[column]] = lost[row]
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
            if self.keep is not None:
                del track.history[: -self.keep]
            # A box shared with someone mixes their colours: kept only while there is nothing better.
            if track.appearance is None or not _overlaps_others(person, people):
                track.look(looks[column], s.appearance_rate)
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
                    if self.keep is not None and track.track_id is not None:
                        del self.tracks[track.track_id]
                    continue  # a tentative track must be seen in consecutive frames; a born one has patience
            survivors.append(track)
        self.live = survivors
        return ids


def _centre(box: np.ndarray) -> np.ndarray:
    return box[:2] + box[2:] / 2


def _assign(costs: np.ndarray) -> dict[int, int]:
    """{column: row} of the cheapest one-to-one assignment, finite costs only."""
    if not costs.size:
        return {}
    rows, columns = linear_sum_assignment(np.where(np.isfinite(costs), costs, 1e9))
    return {int(c): int(r) for r, c in zip(rows, columns) if np.isfinite(costs[r, c])}


def _overlaps_others(person: PersonPrediction, people: Sequence[PersonPrediction]) -> bool:
    return any(other is not person and box_iou(person.box, other.box) > 0.1 for other in people)


__all__ = ["Tracker", "TrackerSettings", "Track", "TrackedPerson", "box_iou"]
