"""Procedural background textures: each a (size, size) float32 field in [0, 1] that mixes two colours.

Every function draws from its own generator only, in a fixed order (generator version 1 uses the
first three with exactly its original draws).
"""

from __future__ import annotations

import numpy as np


def clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth multi-scale value noise."""
    import cv2

    field = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 1.0), (8, 0.5), (16, 0.25), (32, 0.125)):
        coarse = rng.uniform(size=(cells, cells)).astype(np.float32)
        field += weight * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (field - field.min()) / max(np.ptp(field), 1e-6)


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sine stripes at a random angle and frequency."""
    angle = rng.uniform(0, np.pi)
    frequency = rng.uniform(2, 20) * 2 * np.pi / size
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    return 0.5 + 0.5 * np.sin(frequency * (cols * np.cos(angle) + rows * np.sin(angle)))


def room(rng: np.random.Generator, size: int) -> np.ndarray:
    """A floor/wall split with a vertical gradient on the wall."""
    rows = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    horizon = rng.uniform(0.3, 0.8)
    return np.broadcast_to(np.where(rows > horizon, 1.0, rows / horizon * 0.4), (size, size))


def tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    """A chequered floor in perspective below a plain wall (a gym, a kitchen, a square)."""
    horizon = rng.uniform(0.1, 0.6) * size
    tile = rng.uniform(0.3, 1.5)
    turn = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    below = np.maximum(rows - horizon, 1.0)
    depth = size / below  # ground-plane distance grows towards the horizon
    x = (cols - size / 2) / size * depth
    u = (x * np.cos(turn) + depth * np.sin(turn)) / tile
    v = (-x * np.sin(turn) + depth * np.cos(turn)) / tile
    floor = (np.floor(u) + np.floor(v)) % 2
    fade = np.clip(below / (0.15 * size), 0, 1)  # far tiles blur into their mean
    floor = 0.5 + (floor - 0.5) * fade
    wall = rng.uniform(0.2, 0.5)
    return np.where(rows > horizon, floor, wall).astype(np.float32)


def cells(rng: np.random.Generator, size: int) -> np.ndarray:
    """Voronoi cells of random shades (stone walls, crowds of shapes)."""
    from scipy.spatial import cKDTree

    count = int(rng.integers(8, 48))
    seeds = rng.uniform(0, size, size=(count, 2))
    shades = rng.uniform(size=count)
    rows, cols = np.mgrid[0:size, 0:size]
    _, nearest = cKDTree(seeds).query(np.stack([rows.ravel(), cols.ravel()], 1))
    return shades[nearest].reshape(size, size).astype(np.float32)


def blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft overlapping discs (bokeh, foliage, balloons)."""
    import cv2

    field = np.full((size, size), rng.uniform(), np.float32)
    for _ in range(int(rng.integers(6, 30))):
        centre = tuple(int(c) for c in rng.uniform(0, size, size=2))
        radius = int(rng.uniform(0.03, 0.25) * size) + 1
        cv2.circle(field, centre, radius, float(rng.uniform()), -1, cv2.LINE_AA)
    sigma = rng.uniform(0.0, 0.02) * size
    return cv2.GaussianBlur(field, (0, 0), sigma) if sigma > 0.3 else field


TEXTURES = {"clouds": clouds, "stripes": stripes, "room": room, "tiles": tiles, "cells": cells, "blobs": blobs}
