"""Person detectors: a small interface, MediaPipe's networks (the default), torchvision's from a file.

A detector is any callable ``detector(image) -> list[Detection]`` for an (H, W, 3) uint8 RGB
image. :class:`MediaPipeDetector` finds people with BlazePose (hands with MediaPipe Hands), ported
to PyTorch and fetched by ``make`` / ``fastmetro assets fetch``; its detections carry the
landmarks. :class:`TorchvisionDetector` builds a torchvision Faster/Keypoint/Mask R-CNN (or
RetinaNet/FCOS) *without* weights and loads the user's file with ``torch.load(weights_only=True)``
(or safetensors); the architecture is recognised from the file's keys. Nothing is downloaded.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe.follow import PeopleFollower
from fastmetro.mediapipe.people import FoundPerson, PeopleFinder
from fastmetro.model_files import read_state_dict

#: COCO category id of "person" in torchvision's detection models.
COCO_PERSON = 1

# torchvision builders tried in order; the first whose state_dict matches the file's is used.
ARCHITECTURES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "keypointrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
)


@dataclass(frozen=True)
class Detection:
    """A detected person: ``box`` (x, y, w, h) pixels and a confidence ``score``; hand detectors
    may say the ``side``; MediaPipe's detections carry the ``pose`` found (landmarks and scores)."""

    box: tuple[float, float, float, float]
    score: float
    side: str | None = None
    pose: FoundPerson | None = None


def _detection(person: FoundPerson) -> Detection:
    return Detection(person.box, float(person.score), person.side, person)


class PersonDetector(Protocol):
    def __call__(self, image: np.ndarray) -> list[Detection]: ...


def build_matching(state: dict[str, torch.Tensor], source: Path, architecture: str | None = None):
    """The torchvision detector whose parameters and buffers match ``state`` exactly."""
    import torchvision.models.detection as detection

    candidates = (architecture,) if architecture else _candidates(state)
    for name in candidates:
        builder = getattr(detection, name, None)
        if builder is None:
            raise FastMetroError(f"unknown torchvision detector {name!r}")
        num_classes = _num_classes(state)
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        try:
            model = builder(**kwargs)
        except (TypeError, ValueError):
            continue
        expected = model.state_dict()
        if set(expected) == set(state) and all(expected[k].shape == state[k].shape for k in expected):
            model.load_state_dict(state, strict=True)
            return model.eval(), name
    raise FastMetroError(f"{source}: weights match none of the torchvision detectors {', '.join(candidates)}")


def _candidates(state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Narrow :data:`ARCHITECTURES` by distinctive keys, so only a few models get built."""
    keys = set(state)
    has = lambda fragment: any(fragment in key for key in keys)  # noqa: E731
    if has("keypoint_predictor"):
        family = "keypointrcnn"
    elif has("mask_predictor"):
        family = "maskrcnn"
    elif has("bbox_ctrness"):
        family = "fcos"
    elif has("classification_head"):
        family = "retinanet"
    else:
        family = "fasterrcnn"
    backbone = "resnet50" if has("backbone.body.layer1.") else "mobilenet"
    found = tuple(name for name in ARCHITECTURES if name.startswith(family) and backbone in name)
    return found or ARCHITECTURES


def _num_classes(state: dict[str, torch.Tensor]) -> int | None:
    for key in ("roi_heads.box_predictor.cls_score.weight",):
        if key in state:
            return int(state[key].shape[0])
    return None


class TorchvisionDetector:
    """torchvision detector from a local weights file; returns COCO "person" boxes.

    Args:
        weights: path to the detector's state dict (``.pth``/``.pt``/``.safetensors``).
        score_threshold: minimum confidence kept.
        max_people: keep at most this many, highest score first.
        architecture: torchvision builder name; recognised from the file when None.
        device: torch device.
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        score_threshold: float = 0.7,
        max_people: int = 20,
        architecture: str | None = None,
        device: str | torch.device = "cpu",
    ):
        path = Path(weights)
        self.model, self.architecture = build_matching(read_state_dict(path, "detector weights"), path, architecture)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.score_threshold = float(score_threshold)
        self.max_people = int(max_people)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> list[Detection]:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
        output = self.model([tensor.to(self.device)])[0]
        boxes = output["boxes"].cpu().numpy()
        scores = output["scores"].cpu().numpy()
        labels = output["labels"].cpu().numpy()
        keep = (labels == COCO_PERSON) & (scores >= self.score_threshold)
        order = np.argsort(-scores[keep])[: self.max_people]
        detections = []
        for x1, y1, x2, y2, score in np.column_stack([boxes[keep], scores[keep]])[order]:
            if x2 > x1 and y2 > y1:
                detections.append(Detection((float(x1), float(y1), float(x2 - x1), float(y2 - y1)), float(score)))
        return detections


class MediaPipeDetector:
    """People (or hands) found by MediaPipe's networks in PyTorch (:class:`~fastmetro.mediapipe.people.PeopleFinder`).

    The networks load on the first call. The defaults were chosen on synthetic multi-person
    scenes (``benchmarks/detection.py``): a detector probability of 0.3 with both the image and
    its mirror seen, kept when the landmark network's presence is at least 0.8.

    Args:
        kind: "body" or "hand"; :func:`detector_for` switches it to the model's.
        landmarks: landmark network variant ("lite", "full", "heavy"; hands "lite", "full"), or
            None for boxes from the detector alone.
        threshold: detector probability kept. presence_threshold: landmark presence kept.
        max_people: at most N per image, most confident first.
        device: torch device.
        refine, flip, tiles: see :class:`~fastmetro.mediapipe.people.PeopleFinder`.
    """

    def __init__(
        self,
        kind: str = "body",
        landmarks: str | None = "full",
        threshold: float = 0.3,
        presence_threshold: float = 0.8,
        max_people: int = 20,
        device: str | torch.device = "cpu",
        refine: bool = False,
        flip: bool = True,
        tiles: int = 0,
    ):
        if kind not in ("body", "hand"):
            raise FastMetroError(f"detector kind must be 'body' or 'hand', got {kind!r}")
        if kind == "hand" and landmarks == "heavy":
            landmarks = "full"  # MediaPipe Hands has lite and full only
        self.kind = kind
        self.settings: dict[str, Any] = dict(
            landmarks=landmarks,
            threshold=threshold,
            presence_threshold=presence_threshold,
            max_people=max_people,
            device=device,
            refine=refine,
            flip=flip,
            tiles=tiles,
        )
        self._finder = None
        self._lock = threading.Lock()

    def with_kind(self, kind: str) -> MediaPipeDetector:
        """The same settings for bodies or hands."""
        return self if kind == self.kind else MediaPipeDetector(kind, **self.settings)

    @property
    def finder(self):
        with self._lock:
            if self._finder is None:
                self._finder = PeopleFinder(self.kind, **self.settings)
            return self._finder

    def load(self) -> MediaPipeDetector:
        """Load the networks now (a missing asset fails here, not on the first image)."""
        _ = self.finder
        return self

    def __call__(self, image: np.ndarray) -> list[Detection]:
        return self.detect_many([image])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """The detections of several images, the networks batched across them."""
        found = self.finder.find(images)
        return [[_detection(person) for person in people] for people in found]

    def describe(self) -> str:
        landmarks = self.settings["landmarks"]
        model = "BlazePose" if self.kind == "body" else "MediaPipe Hands"
        return f"{model} ({landmarks or 'detector only'})"

    def can_follow(self) -> bool:
        """Whether :meth:`following` has a video mode: bodies with a landmark network."""
        return self.kind == "body" and self.settings["landmarks"] is not None

    def following(self, detect_every: int = 5) -> FollowingDetector:
        """A detector for the frames of one video, in order: the people of the frame before
        found again by their landmarks, the detector every ``detect_every`` frames and when
        someone is lost (:class:`~fastmetro.mediapipe.follow.PeopleFollower`)."""
        if not self.can_follow():
            raise FastMetroError(f"{self.describe()} has no video mode (bodies with landmarks only)")
        return FollowingDetector(self, PeopleFollower(self.finder, detect_every))


class FollowingDetector:
    """:meth:`MediaPipeDetector.following`: a detector with a state, for one video's frames in order."""

    def __init__(self, detector: MediaPipeDetector, follower: PeopleFollower):
        self.detector, self.follower = detector, follower
        self.kind = detector.kind

    def __call__(self, image: np.ndarray) -> list[Detection]:
        people = self.follower(image)
        return [_detection(person) for person in people]

    def reset(self) -> None:
        self.follower.reset()

    def describe(self) -> str:
        return f"{self.detector.describe()}, followed between detections (every {self.follower.detect_every} frames)"


def detector_for(detector, is_hand: bool):
    """The detector to use with a body or hand model: a :class:`MediaPipeDetector` switches to
    the palm detector for hand models; any other callable is used as it is."""
    if isinstance(detector, MediaPipeDetector):
        return detector.with_kind("hand" if is_hand else "body")
    return detector


def make_detector(
    choice: str | None,
    is_hand: bool = False,
    threshold: float | None = None,
    max_people: int = 20,
    landmarks: str | None = "full",
    architecture: str | None = None,
    device: str = "cpu",
    tiles: int = 0,
):
    """The detector a command line asks for: ``"mediapipe"`` (the default), ``"none"`` (no
    detector: the whole image is the box) or a torchvision weights file.

    ``threshold`` None: each detector's own default (MediaPipe 0.3, torchvision 0.7).
    """
    if choice is None or choice == "none":
        return None
    if choice == "mediapipe":
        detector = MediaPipeDetector(
            "hand" if is_hand else "body",
            landmarks=landmarks,
            max_people=max_people,
            device=device,
            tiles=tiles,
            **({} if threshold is None else {"threshold": threshold}),  # type: ignore[arg-type]  # mypy: **dict
        )
        return detector.load()
    return TorchvisionDetector(
        choice,
        score_threshold=0.7 if threshold is None else threshold,
        max_people=max_people,
        architecture=architecture,
        device=device,
    )


__all__ = [
    "Detection",
    "PersonDetector",
    "TorchvisionDetector",
    "MediaPipeDetector",
    "FollowingDetector",
    "detector_for",
    "make_detector",
    "ARCHITECTURES",
    "COCO_PERSON",
]
