"""Cameras of generator version 2: per-family elevations, steep look-down views, close-ups and
bodies cut by the image border.

Same pinhole model and axes as :func:`fastmetro.data.synthetic.scene.sample_camera` (principal
point at the image centre, OpenCV camera axes). What changes:

* the field of view comes from the split's ranges (train 25-65 degrees);
* the elevation comes from the pose family's range (lying bodies are seen from above), and
  with probability STEEP_PROBABILITY from a steep look-down range (45-80 degrees) whatever the
  family;
* with probability CUT_PROBABILITY the camera moves 1.2-2.6x closer than the distance that fits
  the whole body and aims at a random joint placed anywhere in the central part of the image:
  close-ups, and bodies partly outside the image. At least MIN_VISIBLE_JOINTS of the joints
  stay inside (otherwise the whole body is framed, as in the other samples).
"""

from __future__ import annotations

import numpy as np

from fastmetro.data.synthetic.scene import (
    MARGIN,
    ROLL_DEGREES,
    WIDE_ROLL_DEGREES,
    WIDE_ROLL_PROBABILITY,
    Camera,
    View,
)

STEEP_PROBABILITY = 0.15
STEEP_ELEVATION_DEGREES = (45.0, 80.0)
CUT_PROBABILITY = 0.3
CUT_ZOOM = (1.2, 2.6)
CUT_TARGET_SPREAD = 0.3  # the aimed-at joint lands within +-30 % of the side from the centre
MIN_VISIBLE_JOINTS = 6
NEAREST_DEPTH = 0.25  # metres: no vertex closer to the camera than this


def _pick_fov(rng: np.random.Generator, ranges: tuple[tuple[float, float], ...]) -> float:
    widths = np.array([high - low for low, high in ranges], dtype=np.float64)
    low, high = ranges[int(rng.choice(len(ranges), p=widths / widths.sum()))]
    return float(rng.uniform(low, high))


def in_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """(N,) bool: pixel-centre coordinates (N, 2) inside a ``size`` square image."""
    return np.asarray((pixels >= -0.5).all(1) & (pixels <= size - 0.5).all(1))


def sample_framed_camera(
    rng: np.random.Generator,
    vertices: np.ndarray,
    joints: np.ndarray,
    size: int,
    elevation_degrees: tuple[float, float],
    fov_degrees: tuple[tuple[float, float], ...],
) -> tuple[Camera, bool]:
    """A camera for one body, and whether it cuts the body (close-up) or frames all of it.

    vertices: (V, 3) and joints: (K, 3), Anny world, metres; size: image side in pixels.
    """
    fov = np.radians(_pick_fov(rng, fov_degrees))
    focal = (size / 2.0) / np.tan(fov / 2.0)
    yaw = rng.uniform(-180.0, 180.0)
    steep = rng.uniform() < STEEP_PROBABILITY
    elevation = rng.uniform(*(STEEP_ELEVATION_DEGREES if steep else elevation_degrees))
    roll_limit = WIDE_ROLL_DEGREES if rng.uniform() < WIDE_ROLL_PROBABILITY else ROLL_DEGREES
    roll = rng.uniform(-roll_limit, roll_limit)
    margin = rng.uniform(*MARGIN)
    slack = rng.uniform(0.0, 1.0, size=3)
    cut = rng.uniform() < CUT_PROBABILITY
    zoom = rng.uniform(*CUT_ZOOM)
    target_joint = int(rng.integers(len(joints)))
    target_spot = rng.uniform(-CUT_TARGET_SPREAD, CUT_TARGET_SPREAD, size=2) * size

    # Tilting the camera's x axis by +elevation turns its view down (version 1's sample_camera
    # turns it by -elevation: its "elevation" in fact looked up from below for positive values).
    view = View.of(vertices, yaw, elevation, roll, size, focal, margin)
    rotation, intrinsics = view.rotation, view.intrinsics
    if cut:
        distance = max(view.needed / zoom, NEAREST_DEPTH - view.points[:, 2].min())
        target = joints[target_joint] @ rotation.T - view.centre
        depth = target[2] + distance
        shift = target_spot / focal * depth - target[:2]
        translation = np.array([shift[0], shift[1], distance]) - view.centre
        camera = Camera(rotation, translation, intrinsics)
        if in_image(camera.project(camera.to_camera(joints)), size).sum() >= MIN_VISIBLE_JOINTS:
            return camera, True
    # The whole body in view, off-centre within the spare room (as generator version 1).
    return Camera(rotation, view.whole_body_translation(slack), intrinsics), False
