"""Rotated square regions of an image: built from two alignment points, cropped, mapped back.

MediaPipe's landmark networks see a person (or hand) upright: the region is a square around a
centre keypoint, its side twice the distance to a second keypoint (times a margin), rotated so
the second keypoint lies straight above the first. All in full-image pixels (continuous
coordinates: the image spans 0..W, 0..H); angles in radians, positive turning x towards y
(clockwise on screen, since y points down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    """A square of side ``size`` pixels centred at ``center`` (x, y), turned by ``rotation``."""

    center: tuple[float, float]
    size: float
    rotation: float

    @classmethod
    def from_alignment(
        cls, start: np.ndarray, end: np.ndarray, scale: float, shift_y: float = 0.0, target_angle: float = math.pi / 2
    ) -> Region:
        """The region of two keypoints (pixels), as MediaPipe's alignment-points rectangles.

        Side ``2 |end - start| * scale``; rotated so that ``end`` appears at ``target_angle``
        from ``start`` (90 degrees: straight above); the centre moved by ``shift_y`` sides along
        the region's own y axis (negative: towards ``end``) before the scaling.
        """
        dx, dy = float(end[0] - start[0]), float(end[1] - start[1])
        side = 2.0 * math.hypot(dx, dy)
        rotation = _wrap(target_angle - math.atan2(-dy, dx))
        shift = np.array([-math.sin(rotation), math.cos(rotation)]) * side * shift_y
        center = (float(start[0] + shift[0]), float(start[1] + shift[1]))
        return cls(center, side * scale, rotation)

    @classmethod
    def from_box(
        cls,
        box: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        scale: float,
        shift_y: float = 0.0,
        target_angle: float = math.pi / 2,
    ) -> Region:
        """The region of a detection box (x_min, y_min, x_max, y_max) pixels turned by two keypoints,
        as MediaPipe's detection rectangles (palms): centred on the box, its longer side, moved by
        ``shift_y`` box heights along the region's own y axis, then scaled."""
        dx, dy = float(end[0] - start[0]), float(end[1] - start[1])
        rotation = _wrap(target_angle - math.atan2(-dy, dx))
        width, height = float(box[2] - box[0]), float(box[3] - box[1])
        shift = np.array([-math.sin(rotation), math.cos(rotation)]) * height * shift_y
        center = ((box[0] + box[2]) / 2 + shift[0], (box[1] + box[3]) / 2 + shift[1])
        return cls((float(center[0]), float(center[1])), max(width, height) * scale, rotation)

    def crop_to_image(self, crop_size: int) -> np.ndarray:
        """(2, 3) affine map from crop pixels (continuous, 0..crop_size) to image pixels."""
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        linear = np.array([[cos, -sin], [sin, cos]]) * (self.size / crop_size)
        offset = np.asarray(self.center) - linear @ np.array([crop_size / 2, crop_size / 2])
        return np.concatenate([linear, offset[:, None]], axis=1)

    def crop(self, image: np.ndarray, crop_size: int, border: str = "replicate") -> np.ndarray:
        """(crop_size, crop_size, 3) of the (H, W, 3) image, bilinear; outside: edge pixels or black."""
        matrix = self.crop_to_image(crop_size)
        # OpenCV's pixel centres are at integers: shift the continuous map by half a pixel each side.
        centred = matrix.copy()
        centred[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
        mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
        return cv2.warpAffine(
            image,
            centred,
            (crop_size, crop_size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=mode,
            borderValue=(0, 0, 0),
        )

    def to_image(self, points: np.ndarray, crop_size: int) -> np.ndarray:
        """Crop pixels (..., 2) -> image pixels."""
        matrix = self.crop_to_image(crop_size)
        points = np.asarray(points, dtype=np.float64)
        return points @ matrix[:, :2].T + matrix[:, 2]

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        """(..., 3) vectors in the upright crop's axes -> the image's axes (turned about z)."""
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        turn = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        return np.asarray(vectors, dtype=np.float64) @ turn.T

    def corners(self) -> np.ndarray:
        """(4, 2) corners in image pixels."""
        return self.to_image(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), 1)


def _wrap(angle: float) -> float:
    """An angle in [-pi, pi)."""
    return angle - 2.0 * math.pi * math.floor((angle + math.pi) / (2.0 * math.pi))


__all__ = ["Region"]
