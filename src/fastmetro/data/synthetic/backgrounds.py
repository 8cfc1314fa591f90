"""Backgrounds of generator version 2: one split's photos and textures, with camera-like variation.

``mixed``: a random crop of one of the split's photographs (55 %) or one of its procedural
textures (:mod:`fastmetro.data.synthetic.textures`) in two random colours; then, independently,
a defocus blur (30 %: the subject in focus, the background not) and a brightness / contrast
change. ``studio``: the plain backdrop of version 1.
"""

from __future__ import annotations

import numpy as np

from fastmetro.data.synthetic import textures
from fastmetro.data.synthetic.scene import Backgrounds, _paint, _random_colour
from fastmetro.data.synthetic.splits import SplitSpec

PHOTO_PROBABILITY = 0.55
BLUR_PROBABILITY = 0.3


class SplitBackgrounds(Backgrounds):
    """The backgrounds of one split (its photos are loaded once, at construction)."""

    def __init__(self, split: SplitSpec):
        super().__init__(split.photos)
        self.textures = split.textures

    def sample(self, rng: np.random.Generator, size: int, kind: str = "mixed") -> np.ndarray:
        """(size, size, 3) uint8."""
        if kind == "studio":
            return self._studio(rng, size)
        if self.photos and rng.uniform() < PHOTO_PROBABILITY:
            image = self._photo(rng, size)
        else:
            name = self.textures[int(rng.integers(len(self.textures)))]
            base, other = _random_colour(rng), _random_colour(rng)
            image = _paint(rng, textures.TEXTURES[name](rng, size), base, other)
        return _camera_look(rng, image)


def _camera_look(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Defocus blur (sometimes) and a brightness / contrast change."""
    import cv2

    blur = rng.uniform() < BLUR_PROBABILITY
    sigma = rng.uniform(0.4, 2.0) * image.shape[0] / 128.0
    gain, offset = rng.uniform(0.6, 1.25), rng.uniform(-25.0, 25.0)
    if blur:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
