"""Person boxes: what a box is, where the boxes of an image come from, and the checks every box passes.

A box is ``(x, y, w, h)`` in full-image pixels (OpenCV pixel centres, see
:mod:`fastmetro.inference.camera`). The boxes of one image come from exactly one source:

* given boxes (the same for every image, e.g. ``--bbox``),
* a boxes file / mapping ``{image key: [box, ...]}`` (``--boxes``; an image missing from it uses
  the whole image, with a warning),
* a person detector (``detector(image) -> [Detection]``),
* or none: the whole image is the box (with a warning), as the released demo's centred crops.

:func:`person_boxes` is the one place that turns any of these into checked :class:`PersonBox`
lists; :class:`fastmetro.inference.predictor.Predictor` and
:class:`fastmetro.inference.runner.InferenceRunner` both use it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastmetro.conventions import side_from_scale
from fastmetro.errors import FastMetroError

SIDES = ("right", "left")
#: Smallest width/height of a person box (pixels): below it the crop is a blur of one pixel.
MIN_BOX_SIZE = 1.0
#: Largest box side, as a multiple of the image's longer side (released boxes may exceed the
#: image a little; a box far larger than the image puts the person into a few crop pixels).
MAX_BOX_TO_IMAGE = 10.0
#: Largest |coordinate| or size of any box (pixels), whatever the image: far beyond any photo.
MAX_BOX_COORDINATE = 1e7


@dataclass
class PersonBox:
    """A person (or hand) to reconstruct: ``(x, y, w, h)`` pixels, the hand side, the
    square's expansion factor (None: the predictor's ``box_expand``), and what a detector found
    (``pose``: MediaPipe's landmarks, see :class:`~fastmetro.mediapipe.people.FoundPerson`)."""

    box: tuple[float, float, float, float]
    side: str = "right"
    score: float | None = None
    expand: float | None = None
    pose: object | None = None

    def __post_init__(self):
        if self.side not in SIDES:
            raise FastMetroError(f"hand side must be one of {SIDES}, got {self.side!r}")


def box_tuple(values: Sequence) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` as four Python floats (a detector's or an array's box; no validation)."""
    x, y, w, h = (float(v) for v in values)
    return x, y, w, h


def check_box(values: Sequence, what: str = "box") -> tuple[float, float, float, float]:
    """Four finite numbers, width and height at least :data:`MIN_BOX_SIZE` pixels.

    Raises:
        FastMetroError: ``"<what> [x, y, w, h] has ..."`` (one line).
    """
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        raise FastMetroError(f"{what} {list(values)!r}: expected four numbers x, y, w, h") from None
    if len(numbers) != 4:
        raise FastMetroError(f"{what} {numbers}: expected four numbers x, y, w, h, got {len(numbers)}")
    x, y, w, h = numbers
    if not all(math.isfinite(v) for v in numbers):
        raise FastMetroError(f"{what} {numbers} has a non-finite number")
    if w <= 0 or h <= 0:
        raise FastMetroError(f"{what} {numbers} has zero or negative size")
    if w < MIN_BOX_SIZE or h < MIN_BOX_SIZE:
        raise FastMetroError(f"{what} {numbers} is under {MIN_BOX_SIZE:g} pixel wide or high")
    if max(abs(v) for v in numbers) > MAX_BOX_COORDINATE:
        raise FastMetroError(f"{what} {numbers} has a number beyond {MAX_BOX_COORDINATE:g} pixels")
    return x, y, w, h


def check_box_for_image(box: Sequence[float], image_size: tuple[int, int], what: str = "box") -> None:
    """A box no larger than :data:`MAX_BOX_TO_IMAGE` times the (W, H) image's longer side.
    (Boxes outside the image are refused where the crop is made, by ``camera.square_box``.)"""
    x, y, w, h = check_box(box, what)
    limit = MAX_BOX_TO_IMAGE * max(image_size)
    if max(w, h) > limit:
        width, height = image_size
        raise FastMetroError(
            f"{what} {[x, y, w, h]} is over {MAX_BOX_TO_IMAGE:g} times the {width}x{height} image's longer side"
        )


def parse_bbox(text: str, what: str = "--bbox") -> tuple[float, float, float, float]:
    """``"x,y,w,h"`` -> four checked numbers (see :func:`check_box`)."""
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise FastMetroError(f"{what} {text!r}: expected four numbers x,y,w,h")
    return check_box(values, f"{what} {text!r}:")


def whole_image_box(image_size: tuple[int, int], side: str = "right") -> PersonBox:
    """The whole (W, H) image as the box, used as is (no expansion)."""
    width, height = image_size
    return PersonBox((0.0, 0.0, float(width), float(height)), side=side, expand=1.0)


def person_boxes(
    image: np.ndarray,
    boxes: Sequence[PersonBox | Sequence[float]] | None,
    detector: Callable | None = None,
    source: str = "<image>",
    warnings: list[str] | None = None,
    side: str = "right",
) -> list[PersonBox]:
    """The checked boxes of one (H, W, 3) image.

    Args:
        boxes: given boxes (``PersonBox`` or ``(x, y, w, h)``; plain boxes get ``side``), or None.
        detector: used when ``boxes`` is None; no detector and no boxes -> the whole image.
        source: the image's name in messages.
        warnings: list the "whole image" / "no person found" warnings are appended to.

    Raises:
        FastMetroError: ``"<source>: box ..."`` for a box that fails :func:`check_box_for_image`.
    """
    warnings = [] if warnings is None else warnings
    height, width = image.shape[:2]
    if boxes is None and detector is not None:
        detections = detector(image)
        if not detections:
            warnings.append(f"{source}: the detector found no person")
        # A hand detector's own side (MediaPipe's handedness) wins over the default side.
        people = [
            PersonBox(
                box_tuple(d.box),
                side=getattr(d, "side", None) or side,
                score=d.score,
                pose=getattr(d, "pose", None),
            )
            for d in detections
        ]
    elif boxes is None:
        warnings.append(f"{source}: no person box given; using the whole image as the box")
        people = [whole_image_box((width, height), side)]
    else:
        try:
            people = [box if isinstance(box, PersonBox) else PersonBox(check_box(box), side=side) for box in boxes]
        except FastMetroError as error:
            raise FastMetroError(f"{source}: {error}") from None
    for person in people:
        try:
            check_box_for_image(person.box, (width, height))
        except FastMetroError as error:
            raise FastMetroError(f"{source}: {error}") from None
    return people


# ----------------------------------------------------------------------------- boxes files
def read_boxes_file(path: str | os.PathLike, side: str = "right") -> dict[str, list[PersonBox]]:
    """``{image key: [PersonBox, ...]}`` from a boxes JSON (keys: path, file name or stem).

    Entries: ``[x, y, w, h]``, ``{"box": [x, y, w, h], "side": "left"}`` or the released label
    convention ``{"center": [x, y], "scale": s}`` (square of side ``200 s``, used as is). An entry
    without ``"side"`` gets ``side``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FastMetroError(f"{path}: not a readable JSON file ({error})") from None
    except RecursionError:
        raise FastMetroError(f"{path}: not a readable JSON file (nested too deeply)") from None
    if not isinstance(data, dict):
        raise FastMetroError(f"{path}: expected an object mapping image names to lists of boxes")
    boxes = {}
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise FastMetroError(f"{path}: {key!r}: expected a list of boxes")
        try:
            boxes[str(key)] = [_file_entry(entry, side) for entry in entries]
        except FastMetroError as error:
            raise FastMetroError(f"{path}: {key!r}: {error}") from None
    return boxes


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _file_entry(entry, side: str) -> PersonBox:
    expand = None
    if isinstance(entry, dict):
        side = entry.get("side", side)
        if "center" in entry and "scale" in entry:
            entry, expand = _released_box(entry), 1.0
        else:
            entry = entry.get("box")
    if not (isinstance(entry, list) and len(entry) == 4 and all(_is_number(v) for v in entry)):
        raise FastMetroError(f"a box must be [x, y, w, h] numbers, got {entry!r}")
    return PersonBox(check_box(entry), side=side, expand=expand)


def _released_box(entry: dict) -> list:
    """The released label convention: square of side 200 * scale around ``center`` (used as is)."""
    center, scale = entry["center"], entry["scale"]
    if not (isinstance(center, list) and len(center) == 2 and all(_is_number(v) for v in center) and _is_number(scale)):
        raise FastMetroError("center must be [x, y] and scale a number")
    try:
        side = side_from_scale(float(scale))
        return [float(center[0]) - side / 2, float(center[1]) - side / 2, side, side]
    except OverflowError:
        raise FastMetroError(f"center {center} / scale {scale} are too large") from None


# ----------------------------------------------------------------------------- box sources
class BoxSource:
    """Where the boxes of each image come from (see the module docstring).

    ``source(key, image, warnings)`` returns the image's :class:`PersonBox` list, or None for the
    default (the whole image); ``key`` is the image's :class:`~fastmetro.inference.images.Frame`.
    """

    side: str = "right"

    def __call__(self, frame, image: np.ndarray, warnings: list[str]):
        return None

    def describe(self) -> str:
        return "the whole image"


@dataclass
class GivenBoxes(BoxSource):
    """The same boxes for every image."""

    boxes: Sequence[PersonBox | Sequence[float]]
    side: str = "right"

    def __call__(self, frame, image, warnings):
        return [box if isinstance(box, PersonBox) else PersonBox(check_box(box), side=self.side) for box in self.boxes]

    def describe(self) -> str:
        return f"{len(self.boxes)} given box(es)"


@dataclass
class BoxesByImage(BoxSource):
    """Boxes per image, looked up by the frame's source path, file name, output name or stem."""

    boxes: Mapping[str, Sequence[PersonBox | Sequence[float]]]
    label: str = "the boxes file"
    side: str = "right"

    def __call__(self, frame, image, warnings):
        found = lookup(self.boxes, frame)
        if found is None:
            warnings.append(f"{frame.source}: not in {self.label}; using the whole image as the box")
            height, width = image.shape[:2]
            return [whole_image_box((width, height), self.side)]
        return GivenBoxes(found, self.side)(frame, image, warnings)

    def describe(self) -> str:
        return f"boxes from {self.label}"


@dataclass
class DetectorBoxes(BoxSource):
    """A person detector's boxes (none found: a warning, and no person for that image)."""

    detector: Callable
    side: str = "right"

    def __call__(self, frame, image, warnings):
        return person_boxes(image, None, self.detector, frame.source, warnings, self.side)

    def describe(self) -> str:
        return "the person detector"


def lookup(boxes: Mapping, frame):
    """The entry of ``boxes`` for a frame: by source, path, file name, output name, then stem."""
    source = Path(frame.source.split("#frame")[0])
    for key in (frame.source, str(source), source.name, frame.name, source.stem):
        if key in boxes:
            return boxes[key]
    return None


__all__ = [
    "PersonBox",
    "SIDES",
    "MIN_BOX_SIZE",
    "MAX_BOX_TO_IMAGE",
    "MAX_BOX_COORDINATE",
    "check_box",
    "check_box_for_image",
    "parse_bbox",
    "whole_image_box",
    "person_boxes",
    "read_boxes_file",
    "lookup",
    "BoxSource",
    "GivenBoxes",
    "BoxesByImage",
    "DetectorBoxes",
]
