"""Biovision hierarchy (``.bvh``): one person's skeleton and motion, for animation tools.

BVH has no rest orientation per joint and no skinning: a joint is an OFFSET from its parent (in
the parent's frame, rotated by the parent's channels) and three Euler angles per frame. So the
file's rest pose is the rig's bind pose with every joint's frame aligned to the world axes, and a
joint's channels hold its rotation relative to that rest pose:

    Delta_j(t) = W_j(t) @ inverse(W_j(bind)),  local_j(t) = inverse(Delta_parent(t)) @ Delta_j(t)

with W the bone's world rotation in BVH axes (placement applied at frame t, not at bind time).

Axes and units: BVH is y up; the motion's output frame is OpenCV's camera (x right, y down, z
forward), converted by (x, -y, -z), the same rotation as glTF's. Positions are metres (Blender's
BVH importer reads them as metres at its default scale 1). The root's OFFSET is 0 and its position
channels hold the root bone's head in the camera's (converted) frame each frame: read as an offset
from the rest head (Blender) or as the position itself, it is the same point.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.io import write_bytes
from fastmetro.rig.motion import Motion, rigid_parts

OPENCV_TO_BVH = np.diag([1.0, -1.0, -1.0])
CHANNEL_ORDER = "Zrotation Xrotation Yrotation"  # R = Rz @ Rx @ Ry, the order most tools write
# A bone whose head moves relative to its parent by more than this (metres) cannot be written:
# BVH offsets are constant, so the file would place that joint wrongly.
RIGID_TOLERANCE = 1e-4
# An End Site (a leaf's tip) continues the leaf's own segment by this fraction of its length.
_END_SITE_FRACTION = 0.5


def joint_names(names: tuple[str, ...]) -> list[str]:
    """BVH-safe, unique names: a BVH name is one word, so spaces and other symbols become ``_``."""
    safe: list[str] = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.:\-]", "_", name) or "joint"
        candidate, suffix = base, 1
        while candidate in safe:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        safe.append(candidate)
    return safe


def euler_zxy(rotations: np.ndarray) -> np.ndarray:
    """(..., 3) angles (z, x, y) in radians with R = Rz(z) @ Rx(x) @ Ry(y), from (..., 3, 3) R.

    At gimbal lock (x = +-90 degrees) z and y turn about one axis; y is then set to 0.
    """
    r = np.asarray(rotations, np.float64)
    cos_x = np.hypot(r[..., 2, 0], r[..., 2, 2])
    x = np.arctan2(r[..., 2, 1], cos_x)
    locked = cos_x < 1e-9
    z = np.where(locked, np.arctan2(r[..., 1, 0], r[..., 0, 0]), np.arctan2(-r[..., 0, 1], r[..., 1, 1]))
    y = np.where(locked, 0.0, np.arctan2(-r[..., 2, 0], r[..., 2, 2]))
    return np.stack([z, x, y], -1)


def _rest_offsets(motion: Motion) -> np.ndarray:
    """(J, 3) OFFSETs in BVH axes: each bind head minus its parent's (the root's: 0), metres."""
    _, heads = rigid_parts(motion.rig.bind_poses, f"rig of {motion.name}: bind_poses")
    parents = np.asarray(motion.rig.parents)
    offsets = np.zeros_like(heads)
    offsets[1:] = heads[1:] - heads[parents[1:]]
    return offsets @ OPENCV_TO_BVH.T


def _check_rigid(motion: Motion, rotations: np.ndarray, heads: np.ndarray, bind_r, bind_t) -> None:
    """Every bone's head must stay where its bind pose puts it in its parent's frame."""
    parents = np.asarray(motion.rig.parents)[1:]
    bind_local = np.einsum("jba,jb->ja", bind_r[parents], bind_t[1:] - bind_t[parents])
    moved = np.einsum("tjab,jb->tja", rotations[:, parents], bind_local) + heads[:, parents] - heads[:, 1:]
    error = np.linalg.norm(moved, axis=-1).max(axis=0, initial=0.0) if len(parents) else np.zeros(0)
    if (error > RIGID_TOLERANCE).any():
        worst = int(np.argmax(error))
        raise FastMetroError(
            f"motion {motion.name}: bone {motion.rig.bone_names[worst + 1]} moves {error[worst]:.3g} m relative "
            f"to its parent; BVH offsets are fixed (tolerance {RIGID_TOLERANCE} m)"
        )


def _channels(motion: Motion) -> np.ndarray:
    """(T, 3 + 3J) frame values: root head (metres), then each joint's z, x, y angles (degrees)."""
    rig = motion.rig
    bind_r, bind_t = rigid_parts(rig.bind_poses, f"rig of {motion.name}: bind_poses")
    pose_r, pose_t = rigid_parts(motion.bone_poses, f"motion {motion.name}: bone_poses")
    place_r, place_t = rigid_parts(motion.placement, f"motion {motion.name}: placement")
    _check_rigid(motion, pose_r, pose_t, bind_r, bind_t)
    world = OPENCV_TO_BVH @ place_r[:, None] @ pose_r  # (T, J, 3, 3)
    delta = world @ np.swapaxes(OPENCV_TO_BVH @ bind_r, -1, -2)[None]
    parents = np.asarray(rig.parents)
    local = delta.copy()
    local[:, 1:] = np.swapaxes(delta[:, parents[1:]], -1, -2) @ delta[:, 1:]
    # Unwrapped over time (whole turns added), so a tool interpolating angles between frames does
    # not spin a joint the long way round when an angle crosses +-180 degrees.
    angles = np.degrees(np.unwrap(euler_zxy(local), axis=0))
    root = np.einsum("tab,tb->ta", place_r, pose_t[:, 0]) + place_t
    return np.concatenate([root @ OPENCV_TO_BVH.T, angles.reshape(motion.num_frames, -1)], axis=1)


def _hierarchy(motion: Motion, names: list[str], offsets: np.ndarray) -> list[str]:
    parents = np.asarray(motion.rig.parents)
    children: list[list[int]] = [[] for _ in names]
    for j in range(1, len(names)):
        children[int(parents[j])].append(j)
    lines = ["HIERARCHY"]

    def joint(j: int, depth: int) -> None:  # depth-first: BVH lists each joint inside its parent
        pad = "\t" * depth
        lines.append(f"{pad}{'ROOT' if j == 0 else 'JOINT'} {names[j]}")
        lines.append(pad + "{")
        lines.append(f"{pad}\tOFFSET " + " ".join(f"{v:.6f}" for v in offsets[j]))
        position = "6 Xposition Yposition Zposition " if j == 0 else "3 "
        lines.append(f"{pad}\tCHANNELS {position}{CHANNEL_ORDER}")
        for child in children[j]:
            joint(child, depth + 1)
        if not children[j]:
            tip = offsets[j] * _END_SITE_FRACTION if np.linalg.norm(offsets[j]) > 1e-6 else [0.0, 0.05, 0.0]
            tip_offset = f"{pad}\t\tOFFSET " + " ".join(f"{v:.6f}" for v in tip)
            lines.extend([f"{pad}\tEnd Site", pad + "\t{", tip_offset, pad + "\t}"])
        lines.append(pad + "}")

    joint(0, 0)
    return lines


def write_bvh(path: str | os.PathLike, motion: Motion) -> Path:
    """Write ``motion`` as a BVH file (metres, y up; see the module's docstring); atomic.

    Joint names are the rig's bone names made BVH-safe (:func:`joint_names`); the root has 6
    channels (position, then Z X Y rotation), the others 3. Raises FastMetroError for non-rigid or
    mirrored poses, non-finite values, or bones whose offsets change over the motion.
    """
    names = joint_names(motion.rig.bone_names)
    values = _channels(motion)
    lines = _hierarchy(motion, names, _rest_offsets(motion))
    lines += ["MOTION", f"Frames: {motion.num_frames}", f"Frame Time: {1.0 / motion.fps:.8f}"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in values]
    return write_bytes(path, ("\n".join(lines) + "\n").encode())
