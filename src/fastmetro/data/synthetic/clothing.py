"""Clothing of generator version 2: garments with procedural patterns, not flat colours.

The renderer colours vertices (Anny has no UV layout here), so a pattern is a function of each
vertex's *rest-pose* position (metres): it is painted on the body and moves with it. Anny's
vertices are 1-3 cm apart, so patterns keep periods of 3 cm and more.

Patterns (two colours ``a`` / ``b`` mixed by a field in [0, 1]):

* ``solid``   one colour (with the per-vertex shading noise every garment gets);
* ``stripes`` bands across a random direction (mostly horizontal), period 3-15 cm;
* ``checks``  two crossed stripe sets (gingham / plaid when the duty cycle is not 1/2);
* ``noise``   smooth random blotches (sum of random plane waves): camouflage, tie-dye, melange;
* ``dots``    spheres on a 3D lattice (polka dots)       - held out for the generalisation split;
* ``bands``   two or three wide colour blocks by height  - held out for the generalisation split.

Garments: a top (sleeveless / short / long sleeves), trousers / shorts (sometimes the top's
colour: a dress or overall), shoes, hair; skin elsewhere.
"""

from __future__ import annotations

import numpy as np

from fastmetro.data.synthetic.scene import HAIR_COLOURS, SKIN_TONES, _random_colour

PATTERN_KINDS = ("solid", "stripes", "checks", "noise", "dots", "bands")


def _unit(rng: np.random.Generator) -> np.ndarray:
    vector = rng.normal(size=3)
    return vector / np.linalg.norm(vector)


def _stripes(rng, points, direction) -> np.ndarray:
    period = rng.uniform(0.03, 0.15)
    duty = rng.uniform(0.3, 0.7)
    phase = (points @ direction / period + rng.uniform()) % 1.0
    return (phase < duty).astype(np.float32)


def pattern_field(rng: np.random.Generator, kind: str, points: np.ndarray) -> np.ndarray:
    """(N,) float32 in [0, 1]: how much of the second colour each rest-pose point (N, 3) gets."""
    if kind == "solid":
        return np.zeros(len(points), np.float32)
    if kind == "stripes":
        direction = np.array([0.0, 0.0, 1.0]) if rng.uniform() < 0.6 else _unit(rng)
        return _stripes(rng, points, direction)
    if kind == "checks":
        first = _unit(rng)
        second = np.cross(first, _unit(rng))
        second /= np.linalg.norm(second)
        return np.abs(_stripes(rng, points, first) - _stripes(rng, points, second))
    if kind == "noise":
        field = np.zeros(len(points))
        for _ in range(4):
            wavelength = rng.uniform(0.06, 0.3)
            field += np.sin(points @ _unit(rng) * 2 * np.pi / wavelength + rng.uniform(0, 2 * np.pi))
        sharpness = rng.uniform(1.0, 6.0)  # soft melange .. hard-edged camouflage
        return (1.0 / (1.0 + np.exp(-sharpness * field))).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(0.05, 0.12)
        cell = (points / period + rng.uniform(size=3)) % 1.0 - 0.5
        return (np.linalg.norm(cell, axis=1) < rng.uniform(0.2, 0.35)).astype(np.float32)
    if kind == "bands":
        height = points[:, 2]
        cuts = np.sort(rng.uniform(height.min(), height.max(), size=int(rng.integers(1, 3))))
        return (np.searchsorted(cuts, height) % 2).astype(np.float32)
    raise ValueError(f"unknown clothing pattern {kind!r}")


def _garment(rng, patterns: tuple[str, ...], points: np.ndarray) -> np.ndarray:
    """(N, 3) colours of one garment over the rest-pose points it covers."""
    first, second = _random_colour(rng), _random_colour(rng)
    if rng.uniform() < 0.5:  # often a tone of the same colour
        second = np.clip(first * rng.uniform(0.4, 1.6), 0.0, 1.0)
    weights = np.array([2.0 if kind == "solid" else 1.0 for kind in patterns])
    kind = patterns[int(rng.choice(len(patterns), p=weights / weights.sum()))]
    field = pattern_field(rng, kind, points)[:, None]
    return first * (1.0 - field) + second * field


def sample_clothing(
    rng: np.random.Generator,
    regions: dict[str, np.ndarray],
    rest_points: np.ndarray,
    patterns: tuple[str, ...],
) -> np.ndarray:
    """(V, 3) float32 vertex colours in 0..1.

    regions: (V,) bool masks by dominant bone (body.CLOTHING_REGIONS); rest_points: (V, 3)
    rest-pose positions (metres, Anny world: z up); patterns: the kinds this split may draw.
    """
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.85, 1.08)
    colours = np.tile(skin, (len(rest_points), 1))
    sleeves = rng.choice(3, p=[0.15, 0.4, 0.45])  # none, short, long
    top = regions["torso"] | (regions["upper_arm"] if sleeves >= 1 else False)
    if sleeves == 2:
        top = top | regions["forearm"]
    colours[top] = _garment(rng, patterns, rest_points[top])
    bottom = regions["hips"] | regions["thigh"]
    if rng.uniform() < 0.6:
        bottom = bottom | regions["shank"]
    if rng.uniform() < 0.12:  # one piece: the top's colour carries on
        colours[bottom] = colours[top].mean(0)
    else:
        colours[bottom] = _garment(rng, patterns, rest_points[bottom])
    if rng.uniform() < 0.85:
        colours[regions["feet"]] = _random_colour(rng) * 0.6
    height = rest_points[:, 2]
    hair_line = height[regions["head"]].max() - rng.uniform(0.03, 0.14)
    colours[regions["skull"] & (height > hair_line)] = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    colours *= rng.uniform(0.92, 1.08, size=(len(colours), 1))  # fabric / skin shading noise
    return np.clip(colours, 0.0, 1.0).astype(np.float32)
