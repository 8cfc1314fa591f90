"""``--poses``: which pose families a dataset draws from, and how often; the per-sample draw.

A mix is written ``mixed`` (the default weights below), one family name (``standing``), or
weights ``sitting=2,lying=1`` (families not named are not drawn). Sample ``i`` first draws its
family from its pose stream, then the pose (redrawn inside the same family when the
self-intersection test rejects it).
"""

from __future__ import annotations

import numpy as np

from fastmetro.data.synthetic.pose_builder import FamilyPoser
from fastmetro.data.synthetic.pose_families import FAMILIES
from fastmetro.data.synthetic.poses import PoseSampler
from fastmetro.errors import FastMetroError

# Everyday postures dominate photographs; the rest is there so none of them is a surprise.
MIXED_WEIGHTS = {
    "standing": 3.0,
    "walking": 2.0,
    "sitting": 2.0,
    "kneeling": 1.0,
    "squatting": 1.0,
    "lying": 1.5,
    "crawling": 0.7,
    "jumping": 1.0,
    "athletic": 1.5,
    "inverted": 0.6,
}
FALLBACK_SEED = 20240607  # the fixed draw a family falls back to when every attempt intersects


def parse_pose_mix(text: str) -> dict[str, float]:
    """``'mixed'`` / ``'sitting'`` / ``'sitting=2,lying=1'`` -> {family: weight > 0}, in FAMILIES order."""
    text = text.strip()
    if text == "mixed":
        return dict(MIXED_WEIGHTS)
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        name = name.strip()
        if name not in FAMILIES:
            raise FastMetroError(f"--poses: unknown pose family {name!r} (families: mixed, {', '.join(FAMILIES)})")
        try:
            weight = float(value) if value else 1.0
        except ValueError:
            raise FastMetroError(f"--poses: weight of {name!r} is not a number: {value!r}") from None
        if not weight >= 0 or not np.isfinite(weight):
            raise FastMetroError(f"--poses: weight of {name!r} must be >= 0, got {value!r}")
        weights[name] = weights.get(name, 0.0) + weight
    weights = {name: weights[name] for name in FAMILIES if weights.get(name, 0.0) > 0}
    if not weights:
        raise FastMetroError(f"--poses: no family has a positive weight in {text!r}")
    return weights


class FamilySampler:
    """Draws a family, then poses of it: (J, 4, 4) float32 Anny delta transforms."""

    def __init__(self, sampler: PoseSampler):
        self.sampler = sampler
        self.poser = FamilyPoser(sampler)

    @staticmethod
    def choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
        names = list(weights)
        if len(names) == 1:
            return names[0]
        p = np.array([weights[name] for name in names], dtype=np.float64)
        return names[int(rng.choice(len(names), p=p / p.sum()))]

    def sample(self, rng: np.random.Generator, family: str) -> np.ndarray:
        draw = FAMILIES[family].draw
        if draw is None:  # standing: the everyday sampler, as before the families existed
            return self.sampler.sample(rng)
        return self.poser.build(rng, draw(rng, self.poser))

    def fallback(self, family: str) -> np.ndarray:
        """A fixed, unjittered pose of ``family`` (tried when every random attempt intersected)."""
        rng = np.random.default_rng([FALLBACK_SEED, list(FAMILIES).index(family)])
        draw = FAMILIES[family].draw
        if draw is None:
            return self.sampler.sample(rng, activity=0.0)
        return self.poser.build(rng, draw(rng, self.poser), jitter=0.0)
