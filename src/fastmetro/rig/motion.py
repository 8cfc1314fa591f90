"""A skinned body and its motion: what the fitters produce and the rigged exporters write.

A :class:`Rig` is one person's body in its bind pose: a bone hierarchy with a rigid world frame
per bone, the mesh and its linear-blend-skinning weights. A :class:`Motion` poses that rig over
``T`` frames (one frame for a photo): each bone's world frame in the rig's own frame, plus a rigid
``placement`` per frame that carries the rig's frame into the output frame (OpenCV camera
coordinates: x right, y down, z forward, metres).

Skinning, the one convention every writer and test shares (Anny's and glTF's linear blend
skinning, without pose-dependent corrections):

    v_t = placement_t @ sum_k w_ik * bone_poses[t, j_ik] @ inverse(bind_poses[j_ik]) @ v_i

:func:`skin` computes it in numpy (float64) so a client's result (Blender) can be compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastmetro.errors import FastMetroError


@dataclass(frozen=True)
class Rig:
    """One body in its bind pose.

    bone_names: J names (unique); parents: (J,) int, -1 for the root (only bone 0), each parent
    listed before its children; bind_poses: (J, 4, 4) rigid world frames of the bones at bind
    time (a bone's head is its frame's origin), metres; vertices: (V, 3) bind-pose vertices,
    metres, same frame; faces: (F, 3) int; skin_indices / skin_weights: (V, K) bone indices and
    weights, each row summing to 1 (unused slots: weight 0).
    """

    bone_names: tuple[str, ...]
    parents: np.ndarray
    bind_poses: np.ndarray
    vertices: np.ndarray
    faces: np.ndarray
    skin_indices: np.ndarray
    skin_weights: np.ndarray

    def __post_init__(self) -> None:
        count = len(self.bone_names)
        problems = []
        if len(set(self.bone_names)) != count:
            problems.append("bone names are not unique")
        if self.parents.shape != (count,) or self.parents[0] != -1:
            problems.append(f"parents {self.parents.shape} must be ({count},) with -1 first")
        elif any(not 0 <= p < j for j, p in enumerate(self.parents[1:], 1)):
            problems.append("every bone but the first needs a parent listed before it")
        if self.bind_poses.shape != (count, 4, 4):
            problems.append(f"bind_poses {self.bind_poses.shape}, expected {(count, 4, 4)}")
        if self.skin_indices.shape != self.skin_weights.shape or self.skin_indices.shape[0] != len(self.vertices):
            problems.append(
                f"skin {self.skin_indices.shape} / {self.skin_weights.shape} for {len(self.vertices)} vertices"
            )
        if problems:
            raise FastMetroError("rig: " + "; ".join(problems))

    @property
    def num_bones(self) -> int:
        return len(self.bone_names)


@dataclass(frozen=True)
class Motion:
    """A rig posed over T frames.

    bone_poses: (T, J, 4, 4) rigid world frames of the bones in the rig's frame; placement:
    (T, 4, 4) rigid rig frame -> output frame (OpenCV camera, metres); fps: frames per second
    (a photo: T = 1); name: the person's name in the files (``person_00``, ``track_03``).
    """

    rig: Rig
    bone_poses: np.ndarray
    placement: np.ndarray
    fps: float = 30.0
    name: str = "person_00"

    def __post_init__(self) -> None:
        frames = len(self.bone_poses)
        if self.bone_poses.shape != (frames, self.rig.num_bones, 4, 4) or frames == 0:
            raise FastMetroError(
                f"motion {self.name}: bone_poses {self.bone_poses.shape}, expected (T, {self.rig.num_bones}, 4, 4)"
            )
        if self.placement.shape != (frames, 4, 4):
            raise FastMetroError(f"motion {self.name}: placement {self.placement.shape}, expected ({frames}, 4, 4)")
        if not self.fps > 0:
            raise FastMetroError(f"motion {self.name}: fps must be positive, got {self.fps}")

    @property
    def num_frames(self) -> int:
        return len(self.bone_poses)


def skin(motion: Motion, frame: int = 0, placed: bool = True) -> np.ndarray:
    """(V, 3) float64 vertices of ``motion`` at ``frame`` (output frame if ``placed``, else the rig's)."""
    rig = motion.rig
    transforms = np.asarray(motion.bone_poses[frame], np.float64) @ np.linalg.inv(
        np.asarray(rig.bind_poses, np.float64)
    )
    if placed:
        transforms = np.asarray(motion.placement[frame], np.float64) @ transforms
    weights = np.asarray(rig.skin_weights, np.float64)
    blended = np.einsum("vk,vkab->vab", weights, transforms[rig.skin_indices])  # (V, 4, 4)
    vertices = np.asarray(rig.vertices, np.float64)
    return np.einsum("vab,vb->va", blended[:, :3, :3], vertices) + blended[:, :3, 3]


def rigid_parts(matrices: np.ndarray, what: str, tolerance: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3, 3) rotations and (..., 3) translations of rigid (..., 4, 4) ``matrices``, float64.

    Each rotation is replaced by its nearest rotation (SVD), so float32 round-off in the input
    does not reach a file that demands exact unit quaternions. Non-finite values, a scale or shear
    beyond ``tolerance``, a bottom row other than (0, 0, 0, 1) and a reflection (a mirrored body
    cannot be posed by rotations) are errors naming ``what``.
    """
    matrices = np.asarray(matrices, np.float64)
    if matrices.shape[-2:] != (4, 4):
        raise FastMetroError(f"{what}: shape {matrices.shape}, expected (..., 4, 4)")
    if not np.isfinite(matrices).all():
        raise FastMetroError(f"{what}: not finite (NaN or infinity)")
    if np.abs(matrices[..., 3, :] - [0.0, 0.0, 0.0, 1.0]).max(initial=0.0) > 1e-6:
        raise FastMetroError(f"{what}: bottom row is not (0, 0, 0, 1)")
    u, singular, vt = np.linalg.svd(matrices[..., :3, :3])
    if np.abs(singular - 1.0).max(initial=0.0) > tolerance:
        raise FastMetroError(f"{what}: not rigid (scale or shear up to {np.abs(singular - 1.0).max():.3g})")
    rotations = u @ vt
    if (np.linalg.det(rotations) < 0).any():
        raise FastMetroError(f"{what}: a reflection (determinant < 0), not a rotation")
    return rotations, matrices[..., :3, 3].copy()
