"""Crop and augmentation as in the released METRO/FastMETRO code, applied consistently to targets.

Geometry (one affine warp, no pad/rotate/unpad round trip):

* The crop is the square of side ``200 * scale * scale_factor`` px centred on ``center`` (label
  units: pixel centres at integer coordinates), rotated by ``rotation`` degrees, resized to S x S.
* Crop-normalised coordinates: ``u = R(rotation) (p - center) * 2 / side`` in [-1, 1] across the
  box, with ``R(a) = [[cos a, sin a], [-sin a, cos a]]`` (the image content turns counter-clockwise
  on screen by ``a``, cv2's convention). Crop pixel ``j`` has centre ``u = (2 j + 1) / S - 1``.
* 3D joints and vertices (camera axes: x right, y down, z forward) are rotated about the camera's
  z axis by the same ``R`` acting on (x, y), so a weak-perspective camera ``s * (X_xy + t)`` that
  projected the original 3D points onto the original 2D points projects the augmented 3D points
  onto the augmented 2D points (with ``t`` rotated by ``R``: see tests/test_data_augment.py).
* Horizontal flip (after the crop): ``u_x -> -u_x``, ``X -> -X`` and the joints / vertices are
  permuted with the topology's ``joint_flip`` / ``vertex_flip`` (left and right swap).
* Pixel noise: each RGB channel multiplied by U[1 - noise, 1 + noise], clipped to [0, 255].
* Synthetic occlusion (fastmetro option, off by default): random rectangles of random colour or
  noise pasted on the crop; targets are unchanged (occluded joints are still supervised).

Released defaults: flip p=0.5, rotation N(0, 30) clipped to +-60 and set to 0 with p=0.6, scale
factor N(1, 0.25) clipped to [0.75, 1.25], noise 0.4. Hands: :func:`hand_augment_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fastmetro.conventions import (
    IMAGE_SIZE,
    crop_matrix,
    normalise_image,
    normalised_matrix,
    rotation_2d,
    side_from_scale,
    warp_crop,
)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. ``AugmentConfig()`` = the released body settings."""

    flip_prob: float = 0.5
    rotation_std: float = 30.0  # degrees
    rotation_limit: float = 60.0  # |rotation| clipped to this (released: 2 * std)
    rotation_zero_prob: float = 0.6
    scale_std: float = 0.25
    scale_limit: float = 0.25  # scale factor clipped to [1 - limit, 1 + limit]
    noise: float = 0.4  # per-channel factor U[1 - noise, 1 + noise]
    occlusion_prob: float = 0.0  # synthetic occlusion, off by default (not in the released code)
    occlusion_max_patches: int = 3
    occlusion_size: tuple[float, float] = (0.1, 0.4)  # patch side range, fraction of the crop side

    def without_flip(self) -> AugmentConfig:
        return replace(self, flip_prob=0.0)


def body_augment_config(**overrides) -> AugmentConfig:
    """Released body settings (H36M / 3DPW / COCO mixes)."""
    return replace(AugmentConfig(), **overrides)


def hand_augment_config(**overrides) -> AugmentConfig:
    """Released hand settings (FreiHAND): no flip, rotation N(0, 90) clipped to +-180."""
    return replace(AugmentConfig(flip_prob=0.0, rotation_std=90.0, rotation_limit=180.0), **overrides)


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation (identity = evaluation)."""

    flip: bool = False
    rotation: float = 0.0  # degrees, counter-clockwise on screen
    scale_factor: float = 1.0
    channel_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    occlusion_seed: int | None = None  # None: no occlusion


def sample_params(config: AugmentConfig | None, rng: np.random.Generator | None) -> AugmentParams:
    """Draw augmentation parameters (released distributions). ``config`` None -> identity."""
    if config is None:
        return AugmentParams()
    assert rng is not None  # the draws need a generator
    flip = bool(rng.uniform() < config.flip_prob)
    g0, g1, g2 = (float(g) for g in rng.uniform(1.0 - config.noise, 1.0 + config.noise, 3))
    gain = (g0, g1, g2)
    rotation = float(np.clip(rng.normal() * config.rotation_std, -config.rotation_limit, config.rotation_limit))
    scale_factor = float(
        np.clip(rng.normal() * config.scale_std + 1.0, 1.0 - config.scale_limit, 1.0 + config.scale_limit)
    )
    if rng.uniform() <= config.rotation_zero_prob:
        rotation = 0.0
    occlusion_seed = int(rng.integers(2**31)) if rng.uniform() < config.occlusion_prob else None
    return AugmentParams(flip, rotation, scale_factor, gain, occlusion_seed)


def rotation_3d(degrees: float) -> np.ndarray:
    """(3, 3) rotation about the camera z axis matching :func:`rotation_2d` on (x, y)."""
    matrix = np.eye(3)
    matrix[:2, :2] = rotation_2d(degrees)
    return matrix


def crop_side(scale: float, params: AugmentParams) -> float:
    """Side in pixels of the augmented square crop for a label ``scale``."""
    return side_from_scale(scale) * params.scale_factor


def crop_to_normalised(center, scale: float, params: AugmentParams) -> np.ndarray:
    """(2, 3) affine mapping original pixels -> crop-normalised [-1, 1] (before the flip)."""
    return normalised_matrix(center, crop_side(scale, params), params.rotation)


def crop_image(image: np.ndarray, center, scale: float, params: AugmentParams, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8 crop (rotated, scaled, flipped; outside = black), with
    the same warp as inference (:func:`fastmetro.conventions.warp_crop`)."""
    matrix = crop_matrix(center, crop_side(scale, params), size, params.rotation, params.flip)
    return warp_crop(image, matrix, size)


def apply_pixel_noise(crop: np.ndarray, params: AugmentParams) -> np.ndarray:
    """(S, S, 3) uint8 -> float32 in [0, 255] with per-channel gains."""
    return np.clip(crop.astype(np.float32) * np.asarray(params.channel_gain, np.float32), 0.0, 255.0)


def apply_occlusion(crop: np.ndarray, params: AugmentParams, config: AugmentConfig) -> np.ndarray:
    """Paste 1..max random rectangles (flat colour or noise) onto a float32 crop."""
    if params.occlusion_seed is None:
        return crop
    rng = np.random.default_rng(params.occlusion_seed)
    size = crop.shape[0]
    out = crop.copy()
    for _ in range(int(rng.integers(1, config.occlusion_max_patches + 1))):
        height, width = (int(rng.uniform(*config.occlusion_size) * size) + 1 for _ in range(2))
        top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
        if rng.uniform() < 0.5:
            out[top : top + height, left : left + width] = rng.uniform(0, 255, 3).astype(np.float32)
        else:
            out[top : top + height, left : left + width] = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    return out


def transform_joints_2d(
    joints_2d: np.ndarray, center, scale: float, params: AugmentParams, joint_flip: np.ndarray | None
) -> np.ndarray:
    """(K, 3) px + visibility -> (K, 3) crop-normalised [-1, 1] + visibility."""
    affine = crop_to_normalised(center, scale, params)
    out = np.array(joints_2d, dtype=np.float64, copy=True)
    out[:, :2] = joints_2d[:, :2] @ affine[:, :2].T + affine[:, 2]
    if params.flip:
        out = _flip_points(out, joint_flip)
    return out


def transform_points_3d(points: np.ndarray, params: AugmentParams, flip_permutation: np.ndarray | None) -> np.ndarray:
    """(N, C>=3) metres (+ extra columns) -> rotated in-plane, flipped (x negated, permuted)."""
    out = np.array(points, dtype=np.float64, copy=True)
    if params.rotation:
        out[:, :3] = out[:, :3] @ rotation_3d(params.rotation).T
    if params.flip:
        out = _flip_points(out, flip_permutation)
    return out


#: SMPL's 24 joints with left and right swapped (pelvis, hips, spine, knees, ... hands).
SMPL_JOINT_FLIP = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22)


def augment_pose(pose: np.ndarray, params: AugmentParams) -> np.ndarray:
    """SMPL/MANO axis-angle pose (3 J,) under the same augmentation as the image and targets.

    The in-plane rotation turns the global orientation about the camera's z axis; a flip mirrors
    every joint rotation (axis-angle (x, y, z) -> (x, -y, -z)) and, for SMPL's 24 joints, swaps
    left and right joints (MANO hands are never flipped).
    """
    from scipy.spatial.transform import Rotation

    out = np.array(pose, dtype=np.float64).reshape(-1, 3)
    if params.rotation:
        global_orient = Rotation.from_matrix(rotation_3d(params.rotation)) * Rotation.from_rotvec(out[0])
        out[0] = global_orient.as_rotvec()
    if params.flip:
        if len(out) == len(SMPL_JOINT_FLIP):
            out = out[list(SMPL_JOINT_FLIP)]
        out[:, 1:] *= -1.0
    return out.reshape(-1)


def _flip_points(points: np.ndarray, permutation: np.ndarray | None) -> np.ndarray:
    if permutation is None:
        raise ValueError("horizontal flip needs a left/right permutation (this topology has none)")
    flipped = points[np.asarray(permutation)].copy()
    flipped[:, 0] = -flipped[:, 0]
    return flipped


__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "apply_occlusion",
    "apply_pixel_noise",
    "augment_pose",
    "body_augment_config",
    "crop_image",
    "crop_side",
    "crop_to_normalised",
    "hand_augment_config",
    "normalise_image",
    "rotation_2d",
    "rotation_3d",
    "sample_params",
    "transform_joints_2d",
    "transform_points_3d",
]
