"""What a person looks like, for finding them again after an occlusion: colour histograms.

A person's appearance is the hue-saturation histogram (8 x 4 bins, OpenCV's HSV) of the upper
and of the lower half of the inner part of their box (10 % trimmed from each side, which is
mostly background), each normalised to sum 1 and concatenated: (64,) values. Clothing colours
differ more between people than from frame to frame, and the two halves keep a red top over
blue trousers apart from the reverse. Two appearances are compared by the Bhattacharyya
distance ``sqrt(1 - sum(sqrt(a * b)))`` of each half, averaged over the two (0: the same colours, 1: none
in common).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

HUE_BINS, SATURATION_BINS = 8, 4
SIZE = 2 * HUE_BINS * SATURATION_BINS
TRIM = 0.1  # of the box's width and height, from each side


def appearance(image: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
    """(64,) colour histograms of the person in ``box`` (x, y, w, h pixels) of an (H, W, 3) uint8
    RGB image; None when under 4 x 8 pixels of the trimmed box lie inside the image."""
    height, width = image.shape[:2]
    x, y, w, h = (float(v) for v in box)
    x0, x1 = int(max(0, x + TRIM * w)), int(min(width, x + (1 - TRIM) * w))
    y0, y1 = int(max(0, y + TRIM * h)), int(min(height, y + (1 - TRIM) * h))
    if x1 - x0 < 4 or y1 - y0 < 8:
        return None
    hsv = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
    middle = (y1 - y0) // 2
    halves = []
    for part in (hsv[:middle], hsv[middle:]):
        histogram = cv2.calcHist([part], [0, 1], None, [HUE_BINS, SATURATION_BINS], [0, 180, 0, 256]).ravel()
        halves.append(histogram / max(float(histogram.sum()), 1.0))
    return np.concatenate(halves).astype(np.float64)


def appearance_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The mean Bhattacharyya distance of the two halves' histograms (0..1)."""
    half = SIZE // 2
    distances = []
    for part in (slice(0, half), slice(half, SIZE)):
        overlap = float(np.sqrt(a[part] * b[part]).sum())
        distances.append(np.sqrt(max(0.0, 1.0 - overlap)))
    return float(np.mean(distances))


__all__ = ["appearance", "appearance_distance", "SIZE"]
