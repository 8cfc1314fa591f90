"""MediaPipe's single-shot detectors: letterboxed input, SSD anchors, box decoding, weighted NMS.

BlazePose's person detector and the palm detector share one head design: a grid of anchors
(fixed size, one or more per cell), each with a score logit and ``4 + 2 K`` numbers: the box
centre offset and size and ``K`` keypoint offsets, in input pixels relative to the anchor's
centre. The settings below are those of MediaPipe's own graphs for these two networks
(``pose_detection_cpu`` and ``palm_detection_cpu``); the person detector's box is the *face*,
its keypoints carry the body (hip centre, a point that fixes the body's size and direction,
shoulder centre, a point for the upper body).

Coordinates here are normalised to the letterboxed network input (0..1), or full-image pixels
after :meth:`Letterbox.to_image` (continuous: the image spans 0..W, 0..H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DetectorSpec:
    """One detector network's input and head settings.

    Attributes:
        input_size: square input side (pixels).
        value_range: the (low, high) the input's 0..255 pixels are mapped to.
        strides: one per anchor layer; consecutive layers of one stride share a grid.
        min_scale, max_scale: SSD anchor scales (only their count matters: anchors are fixed size).
        num_keypoints: keypoints per detection.
        score_clip: raw score logits are clipped to +-this before the sigmoid.
    """

    input_size: int
    value_range: tuple[float, float]
    strides: tuple[int, ...]
    num_keypoints: int
    score_clip: float = 100.0


#: BlazePose's person detector (224 px, values -1..1, 2254 anchors, 4 keypoints).
POSE_DETECTOR = DetectorSpec(input_size=224, value_range=(-1.0, 1.0), strides=(8, 16, 32, 32, 32), num_keypoints=4)
#: The palm detector (192 px, values 0..1, 2016 anchors, 7 keypoints: wrist, finger bases...).
PALM_DETECTOR = DetectorSpec(input_size=192, value_range=(0.0, 1.0), strides=(8, 16, 16, 16), num_keypoints=7)


def ssd_anchor_centres(spec: DetectorSpec) -> np.ndarray:
    """(N, 2) anchor centres (x, y), normalised, in the order of the network's outputs.

    Each layer contributes two anchors per cell (aspect ratio 1 and the interpolated scale);
    layers with the same stride share the grid, their anchors interleaved per cell. With fixed
    anchor sizes only the centres differ.
    """
    centres = []
    layer = 0
    while layer < len(spec.strides):
        stride = spec.strides[layer]
        same = 0
        while layer + same < len(spec.strides) and spec.strides[layer + same] == stride:
            same += 1
        cells = math.ceil(spec.input_size / stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, 2 * same, axis=1).reshape(-1, 2))
        layer += same
    return np.concatenate(centres).astype(np.float64)


@dataclass(frozen=True)
class Letterbox:
    """An image scaled to fit a square input, centred, the rest black (MediaPipe's keep-aspect mode).

    ``scale`` input pixels per image pixel; ``pad`` (x, y) input pixels before the image.
    """

    size: int
    scale: float
    pad: tuple[float, float]

    @classmethod
    def of(cls, image_size: tuple[int, int], size: int) -> Letterbox:
        width, height = image_size
        scale = size / max(width, height)
        return cls(size, scale, ((size - width * scale) / 2, (size - height * scale) / 2))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(size, size, 3) uint8: ``image`` (H, W, 3) scaled and padded with black."""
        height, width = image.shape[:2]
        scale_x = scale_y = self.scale
        # Shrinking by more than 2x: average first (INTER_AREA), so thin limbs do not alias away.
        if self.scale < 0.5:
            small = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
            image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
            scale_x, scale_y = self.scale * width / small[0], self.scale * height / small[1]
        # Pixel centres at integers (OpenCV): continuous x maps to scale * x + pad.
        matrix = np.array(
            [[scale_x, 0.0, self.pad[0] + 0.5 * scale_x - 0.5], [0.0, scale_y, self.pad[1] + 0.5 * scale_y - 0.5]]
        )
        return cv2.warpAffine(
            image,
            matrix,
            (self.size, self.size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Normalised input coordinates (..., 2) -> full-image pixels."""
        pad = np.asarray(self.pad)
        return (np.asarray(points) * self.size - pad) / self.scale


def normalise(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 (..., 3) -> float32 in ``value_range``."""
    low, high = value_range
    return images.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)


@dataclass
class RawDetection:
    """One decoded detection, in normalised input coordinates (or image pixels once mapped).

    Attributes:
        score: probability (0..1).
        box: (x_min, y_min, x_max, y_max).
        keypoints: (K, 2) x, y.
    """

    score: float
    box: np.ndarray
    keypoints: np.ndarray


def decode(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, spec: DetectorSpec, threshold: float
) -> list[RawDetection]:
    """The detections of one image above ``threshold``.

    Args:
        raw_boxes: (N, 4 + 2K) the network's regression output (x, y, w, h, then keypoints x, y).
        raw_scores: (N,) or (N, 1) score logits.
        anchors: (N, 2) from :func:`ssd_anchor_centres`.
    """
    logits = np.clip(np.asarray(raw_scores, dtype=np.float64).reshape(-1), -spec.score_clip, spec.score_clip)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(scores >= threshold)
    values = np.asarray(raw_boxes, dtype=np.float64)[keep] / spec.input_size
    centres = anchors[keep]
    xy = values[:, :2] + centres
    half = values[:, 2:4] / 2
    boxes = np.concatenate([xy - half, xy + half], axis=1)
    keypoints = values[:, 4 : 4 + 2 * spec.num_keypoints].reshape(len(keep), spec.num_keypoints, 2) + centres[:, None]
    return [RawDetection(float(scores[i]), boxes[n], keypoints[n]) for n, i in enumerate(keep)]


def mirrored(detection: RawDetection) -> RawDetection:
    """A detection made on the horizontally mirrored input, in the unmirrored input's coordinates.
    (The letterbox pads both sides equally, so mirroring commutes with it.) The detectors'
    keypoints lie on the body's midline (or the hand's axis), so no left/right swap is needed."""
    box = np.array([1.0 - detection.box[2], detection.box[1], 1.0 - detection.box[0], detection.box[3]])
    keypoints = detection.keypoints.copy()
    keypoints[:, 0] = 1.0 - keypoints[:, 0]
    return RawDetection(detection.score, box, keypoints)


def in_image(detection: RawDetection, letterbox: Letterbox, offset: tuple[int, int] = (0, 0)) -> RawDetection:
    """A detection of a letterboxed window whose corner is at ``offset`` -> full-image pixels."""
    shift = np.asarray(offset, dtype=np.float64)
    box = letterbox.to_image(detection.box.reshape(2, 2)).reshape(4) + np.tile(shift, 2)
    return RawDetection(detection.score, box, letterbox.to_image(detection.keypoints) + shift)


def tile_grid(width: int, height: int, tiles: int) -> list[tuple[int, int, int, int]]:
    """Overlapping square windows (x, y, w, h) for finding small people: ``tiles`` windows across
    the shorter side, each ``2 / (tiles + 1)`` of it (half a window apart), as many along the
    longer side as cover it. ``tiles`` 0: none (the whole image alone)."""
    if tiles <= 0:
        return []
    side = max(1, round(min(width, height) * 2 / (tiles + 1)))

    def starts(length: int) -> list[int]:
        count = max(1, math.ceil((length - side) / (side / 2)) + 1)
        return sorted({round(i * (length - side) / max(1, count - 1)) for i in range(count)})

    return [(x, y, side, side) for y in starts(height) for x in starts(width)]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x_min, y_min, x_max, y_max) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def weighted_nms(detections: list[RawDetection], iou_threshold: float = 0.3) -> list[RawDetection]:
    """MediaPipe's weighted non-maximum suppression.

    Highest score first; every remaining detection overlapping it by more than ``iou_threshold``
    joins its cluster; the cluster becomes one detection whose box and keypoints are the
    score-weighted mean of its members and whose score is the best member's. (A plain NMS keeps
    one anchor's box; averaging the neighbours steadies the keypoints that fix the body's box.)
    """
    remaining = sorted(detections, key=lambda d: -d.score)
    merged = []
    while remaining:
        best = remaining[0]
        cluster = [d for d in remaining if d is best or box_iou(best.box, d.box) > iou_threshold]
        remaining = [d for d in remaining if not any(d is c for c in cluster)]
        weights = np.array([d.score for d in cluster])
        weights /= weights.sum()
        box = np.einsum("n,nc->c", weights, np.stack([d.box for d in cluster]))
        keypoints = np.einsum("n,nkc->kc", weights, np.stack([d.keypoints for d in cluster]))
        merged.append(RawDetection(best.score, box, keypoints))
    return merged


__all__ = [
    "DetectorSpec",
    "POSE_DETECTOR",
    "PALM_DETECTOR",
    "ssd_anchor_centres",
    "Letterbox",
    "normalise",
    "RawDetection",
    "decode",
    "mirrored",
    "in_image",
    "tile_grid",
    "box_iou",
    "weighted_nms",
]
