"""Crop / uncrop geometry: square person boxes, crop warps, and the weak-perspective camera.

Conventions (used by every function here):

* Pixel coordinates follow OpenCV (and :mod:`fastmetro.render`): the centre of pixel column
  ``i`` is at ``u = i``, so an image of width W spans ``[-0.5, W - 0.5]`` and its centre is
  ``(W - 1) / 2``. A box ``(x, y, w, h)`` has centre ``(x + w / 2, y + h / 2)``.
* A :class:`CropBox` is the released square crop: centre ``(cx, cy)`` and side ``S`` pixels
  (the released label ``scale`` is ``S / 200``). The crop maps the square onto a ``R x R`` image
  (R = 224), padding outside the image with zeros.
* Crop-normalised coordinates are ``n = 2 (u - c) / S`` (so the crop spans ``[-1, 1]``); the
  crop warp and ImageNet normalisation are the shared ones of :mod:`fastmetro.conventions`.
* The network's weak-perspective camera ``(s, tx, ty)`` projects a ROOT-CENTRED 3D point ``X``
  (metres, model coordinates, x right, y down; see :mod:`fastmetro.conventions` for the root
  points) to ``n = s * (X[:2] + (tx, ty))``, as in the released training and demo.
* The equivalent perspective camera of the crop has focal length ``f`` (pixels of the R-pixel
  crop) and translation ``t = (tx, ty, 2 f / (R s))``: a point at depth ~ ``t_z`` then projects to
  the same place. The released demo uses ``f = 1000`` at ``R = 224``.
* Paste-back to the full image (W x H) uses one perspective camera per image with principal point
  at the image centre ``((W - 1) / 2, (H - 1) / 2)`` and focal length ``F``
  (default :func:`default_focal_length`: the released 1000 px per 224 px, applied to the longer image side,
  i.e. the whole image seen as one crop).
  Each person gets its own translation ``t = (tx + 2 (cx - px) / (S s), ty + 2 (cy - py) / (S s),
  2 F / (S s))``, added to the root-centred mesh: for points near the mesh's depth plane its projection equals
  the weak-perspective projection mapped through the box, and the whole scene (every person) is rendered with one
  camera in OpenCV convention (x right, y down, z forward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastmetro.conventions import (
    IMAGE_SIZE,
    crop_matrix,
    perspective_project,
    scale_from_side,
    warp_crop,
    weak_perspective_project,
)
from fastmetro.errors import FastMetroError
from fastmetro.inference.boxes import check_box

#: The released demo's perspective focal length for a 224-pixel crop (pixels).
RELEASED_CROP_FOCAL = 1000.0
#: The released crop size (pixels).


@dataclass(frozen=True)
class CropBox:
    """A square crop region in full-image pixels.

    Attributes:
        center: (cx, cy) pixels.
        side: side length S in pixels (released ``scale`` = S / 200).
    """

    center: tuple[float, float]
    side: float

    @property
    def scale(self) -> float:
        """The released label convention: box side / 200."""
        return scale_from_side(self.side)

    def as_xywh(self) -> tuple[float, float, float, float]:
        cx, cy = self.center
        half = self.side / 2.0
        return (cx - half, cy - half, self.side, self.side)

    def image_to_normalised(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) full-image pixels -> (..., 2) crop-normalised [-1, 1] coordinates."""
        points = np.asarray(points, dtype=np.float64)
        return (points - np.asarray(self.center)) * (2.0 / self.side)

    def normalised_to_image(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) crop-normalised coordinates -> (..., 2) full-image pixels."""
        points = np.asarray(points, dtype=np.float64)
        return points * (self.side / 2.0) + np.asarray(self.center)

    def crop_matrix(self, crop_size: int = IMAGE_SIZE, flip: bool = False) -> np.ndarray:
        """(2, 3) affine map from full-image pixels to crop pixels (OpenCV pixel centres).

        ``flip`` mirrors the crop horizontally (left hands are run through the right-hand model).
        """
        return crop_matrix(self.center, self.side, crop_size, flip=flip)


def square_box(
    box_xywh: Sequence[float],
    expand: float = 1.0,
    image_size: tuple[int, int] | None = None,
) -> CropBox:
    """Square :class:`CropBox` around a person box, centre preserved.

    Args:
        box_xywh: (x, y, w, h) pixels.
        expand: side = ``expand * max(w, h)`` (3DPW labels use 1.2 around a tight box).
        image_size: (W, H); when given, a box that does not overlap the image is refused.

    Raises:
        FastMetroError: the numbers (:func:`fastmetro.inference.boxes.check_box`), the
            expansion, or no overlap with the image.
    """
    x, y, w, h = check_box(box_xywh)
    if not (expand > 0 and math.isfinite(expand)):
        raise FastMetroError(f"box expansion must be positive, got {expand}")
    if image_size is not None:
        width, height = image_size
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise FastMetroError(f"box {[x, y, w, h]} lies outside the {width}x{height} image")
    return CropBox(center=(x + w / 2.0, y + h / 2.0), side=expand * max(w, h))


def whole_image_box(image_size: tuple[int, int]) -> CropBox:
    """The square crop around the whole (W, H) image (used when no person box is given)."""
    width, height = image_size
    return CropBox(center=((width - 1) / 2.0, (height - 1) / 2.0), side=float(max(width, height)))


def crop_image(image: np.ndarray, box: CropBox, crop_size: int = IMAGE_SIZE, flip: bool = False) -> np.ndarray:
    """Warp the square ``box`` of ``image`` (H, W, 3) uint8 to a (R, R, 3) uint8 crop with the
    shared crop warp (:func:`fastmetro.conventions.warp_crop`: zeros outside the image, area
    averaging first when the crop shrinks the image a lot)."""
    return warp_crop(image, box.crop_matrix(crop_size, flip), crop_size)


# ----------------------------------------------------------------------------- cameras
def fit_weak_perspective(points: np.ndarray, normalised: np.ndarray) -> np.ndarray:
    """Least-squares weak-perspective camera (s, tx, ty) with ``normalised ~ s (X[:2] + t)``.

    Args:
        points: (N, 3) metres.
        normalised: (N, 2) crop-normalised projections.
    """
    points = np.asarray(points, dtype=np.float64)
    normalised = np.asarray(normalised, dtype=np.float64)
    count = len(points)
    # Unknowns (s, s*tx, s*ty) are linear.
    design = np.zeros((2 * count, 3))
    design[0::2, 0] = points[:, 0]
    design[0::2, 1] = 1.0
    design[1::2, 0] = points[:, 1]
    design[1::2, 2] = 1.0
    solution, *_ = np.linalg.lstsq(design, normalised.reshape(-1), rcond=None)
    s = solution[0]
    return np.array([s, solution[1] / s, solution[2] / s])


def default_focal_length(
    image_size: tuple[int, int], crop_focal: float = RELEASED_CROP_FOCAL, crop_size: int = IMAGE_SIZE
) -> float:
    """Focal length (pixels) of the full-image camera: the released crop focal, scaled so the
    whole image (its longer side) plays the role of the 224-pixel crop."""
    return crop_focal * max(image_size) / crop_size


def crop_perspective_camera(
    camera: Sequence[float], crop_size: int = IMAGE_SIZE, focal_length: float = RELEASED_CROP_FOCAL
) -> tuple[np.ndarray, np.ndarray]:
    """The crop's perspective camera equivalent to ``(s, tx, ty)`` (released demo convention).

    Returns:
        intrinsics (3, 3) in crop pixels, translation (3,) metres ``(tx, ty, 2 f / (R s))``.
    """
    s, tx, ty = _checked_camera(camera)
    middle = (crop_size - 1) / 2.0
    intrinsics = np.array([[focal_length, 0.0, middle], [0.0, focal_length, middle], [0.0, 0.0, 1.0]])
    return intrinsics, np.array([tx, ty, 2.0 * focal_length / (crop_size * s)])


def full_image_camera(
    camera: Sequence[float],
    box: CropBox,
    image_size: tuple[int, int],
    focal_length: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste-back: the full-image perspective camera for a person's weak-perspective camera.

    Args:
        camera: (s, tx, ty) of the crop ``box``.
        box: the person's square crop.
        image_size: (W, H) of the full image.
        focal_length: F in full-image pixels (default :func:`default_focal_length`).

    Returns:
        intrinsics (3, 3): F and principal point ((W-1)/2, (H-1)/2), shared by every person in
        the image (OpenCV convention, as :class:`fastmetro.render.Renderer`);
        translation (3,) metres to add to the root-centred model-space points to put them in camera coordinates.
    """
    s, tx, ty = _checked_camera(camera)
    width, height = image_size
    focal = default_focal_length(image_size) if focal_length is None else float(focal_length)
    cx, cy = box.center
    px, py = (width - 1) / 2.0, (height - 1) / 2.0
    extent = box.side * s  # pixels per metre of the weak-perspective projection, times 2
    translation = np.array([tx + 2.0 * (cx - px) / extent, ty + 2.0 * (cy - py) / extent, 2.0 * focal / extent])
    intrinsics = np.array([[focal, 0.0, px], [0.0, focal, py], [0.0, 0.0, 1.0]])
    return intrinsics, translation


def _checked_camera(camera: Sequence[float]) -> tuple[float, float, float]:
    s, tx, ty = (float(v) for v in camera)
    if not (math.isfinite(s) and math.isfinite(tx) and math.isfinite(ty)):
        raise ValueError(f"camera {(s, tx, ty)} is not finite")
    # A non-positive scale puts the person behind the camera; keep it usable for drawing.
    if s <= 1e-6:
        s = 1e-6
    return s, tx, ty


__all__ = [
    "CropBox",
    "RELEASED_CROP_FOCAL",
    "square_box",
    "whole_image_box",
    "crop_image",
    "weak_perspective_project",
    "fit_weak_perspective",
    "default_focal_length",
    "crop_perspective_camera",
    "full_image_camera",
    "perspective_project",
]
