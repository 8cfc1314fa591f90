"""Whole-body poses written as a few coordinated joint settings, turned into Anny delta transforms.

A pose family (:mod:`fastmetro.data.synthetic.pose_families`) draws its coordinated parameters
(gait phase, how deep a squat is, which knee is down...) and writes them into a :class:`PoseSpec`
with the helpers below; :meth:`FamilyPoser.build` then fills every joint the family did not set
with a calm everyday draw (today's :class:`~fastmetro.data.synthetic.poses.PoseSampler` at low
activity), adds a small random jitter to every joint the family did set, and returns Anny's
(J, 4, 4) ``local-ref`` delta transforms.

Conventions (see :mod:`fastmetro.data.synthetic.poses`): Anny world x = the body's left,
y = backwards, z = up; a bone's delta rotation is expressed in the world-aligned frame of the
rest pose carried along by its parent. Every setting is written for the LEFT side; a ``.R`` bone
gets its mirror image (in the x = 0 plane): Euler ``(x, y, z)`` -> ``(x, -y, -z)``, a direction
``(dx, dy, dz)`` -> ``(-dx, dy, dz)`` with the opposite twist.

* ``euler(bone, x, y, z)``: ``R = Rz(z) Ry(y) Rx(x)`` degrees, the ranges-of-motion convention
  (hip / shoulder x- = forward flexion, y- = abduction, z = rotation; spine x- = bend forward).
* ``aim(bone, direction, twist)``: the smallest rotation taking the bone's rest direction to
  ``direction`` (parent frame), then ``twist`` degrees about the new direction. Easier than
  Euler angles for limbs far from the rest pose (a thigh pointing forward and out).
* ``hinge(bone, degrees)``: elbow / knee flexion about the sampler's hinge axis.
* ``root``: the whole body's orientation in the world (lying, inverted); the camera turns the
  body about the vertical afterwards, so a family only sets tilt, not heading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from fastmetro.data.synthetic.poses import PoseSampler, mirror_name

# Calm everyday variation of the joints a family leaves free (the standing sampler's activity).
FREE_ACTIVITY = 0.35
# Jitter added to every joint a family sets (degrees, sigma; clipped at 2 sigma).
JITTER_DEGREES = 6.0
HINGE_JITTER_DEGREES = 6.0


def rotation_between(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(3, 3) smallest rotation taking unit vector ``source`` to unit vector ``target``."""
    source = source / np.linalg.norm(source)
    target = target / np.linalg.norm(target)
    axis = np.cross(source, target)
    sine, cosine = np.linalg.norm(axis), float(source @ target)
    if sine < 1e-9:
        if cosine > 0:
            return np.eye(3)
        # Opposite: half a turn about any axis perpendicular to source.
        helper = np.array([1.0, 0.0, 0.0]) if abs(source[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        axis = np.cross(source, helper)
        return Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.pi).as_matrix()
    return Rotation.from_rotvec(axis / sine * np.arctan2(sine, cosine)).as_matrix()


def euler_matrix(x: float, y: float, z: float) -> np.ndarray:
    """``Rz(z) @ Ry(y) @ Rx(x)`` (degrees)."""
    return Rotation.from_euler("ZYX", [z, y, x], degrees=True).as_matrix()


@dataclass
class PoseSpec:
    """What a family sets: rotations (3, 3) per bone, hinge angles, the root and the finger curl."""

    rotations: dict[str, np.ndarray] = field(default_factory=dict)
    hinges: dict[str, float] = field(default_factory=dict)
    root: np.ndarray = field(default_factory=lambda: np.eye(3))
    finger_curl: tuple[float, float] | None = None  # (left, right) degrees per phalanx; None = random


class FamilyPoser:
    """Writes family settings for one rig and builds the (J, 4, 4) transforms."""

    def __init__(self, sampler: PoseSampler):
        self.sampler = sampler
        self.skeleton = sampler.skeleton
        self._hinge_axes = {self.skeleton.bone_labels[i]: axis for i, axis, _ in sampler._hinges}
        self._hinge_limits = {self.skeleton.bone_labels[i]: limits for i, _, limits in sampler._hinges}

    # ------------------------------------------------------------------ writing a spec
    def euler(self, spec: PoseSpec, bone: str, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> None:
        """Set ``bone`` (a ``.L`` name, or one without side) and, for ``.L``/``.R``, as written."""
        if bone.endswith(".R"):
            y, z = -y, -z
        spec.rotations[bone] = euler_matrix(x, y, z)

    def aim(self, spec: PoseSpec, bone: str, direction, twist: float = 0.0) -> None:
        """Point ``bone`` along ``direction`` (left-side convention, parent frame), twisted by ``twist``."""
        direction = np.asarray(direction, dtype=np.float64)
        if bone.endswith(".R"):
            direction = direction * np.array([-1.0, 1.0, 1.0])
            twist = -twist
        direction = direction / np.linalg.norm(direction)
        rest = self.skeleton.direction(bone)
        spin = Rotation.from_rotvec(direction * np.radians(twist)).as_matrix()
        spec.rotations[bone] = spin @ rotation_between(rest, direction)

    def hinge(self, spec: PoseSpec, bone: str, degrees: float) -> None:
        spec.hinges[bone] = float(degrees)

    def pair(self, method, spec: PoseSpec, bone: str, left, right) -> None:
        """Call ``method`` for ``bone.L`` with ``left`` and ``bone.R`` with ``right`` (tuples or scalars)."""
        for side, values in (("L", left), ("R", right)):
            values = values if isinstance(values, tuple) else (values,)
            method(spec, f"{bone}.{side}", *values)

    # ------------------------------------------------------------------ building
    def build(self, rng: np.random.Generator, spec: PoseSpec, jitter: float = 1.0) -> np.ndarray:
        """(J, 4, 4) float32 transforms: free joints calm and random, set joints jittered."""
        skeleton = self.skeleton
        transforms = self.sampler.sample(rng, activity=FREE_ACTIVITY, lean=False)
        rotations = transforms[:, :3, :3].astype(np.float64)
        names = sorted(spec.rotations)
        if names:
            noise = rng.normal(0.0, JITTER_DEGREES * jitter, size=(len(names), 3))
            noise = np.clip(noise, -2 * JITTER_DEGREES * jitter, 2 * JITTER_DEGREES * jitter)
            wobble = Rotation.from_rotvec(np.radians(noise)).as_matrix()
            for name, extra in zip(names, wobble):
                rotations[skeleton.index(name)] = spec.rotations[name] @ extra
        for name in sorted(spec.hinges):
            low, high = self._hinge_limits[name]
            angle = spec.hinges[name] + np.clip(rng.normal(0.0, HINGE_JITTER_DEGREES * jitter), -12.0, 12.0)
            angle = min(max(angle, low), max(high, spec.hinges[name]))  # a family may fold further
            rotations[skeleton.index(name)] = Rotation.from_rotvec(
                self._hinge_axes[name] * np.radians(angle)
            ).as_matrix()
        if spec.finger_curl is not None:
            for side, curl in zip(("L", "R"), spec.finger_curl):
                for index, axis in self.sampler._fingers[side]:
                    rotations[index] = Rotation.from_rotvec(axis * np.radians(curl)).as_matrix()
        root = skeleton.index("root")
        rotations[root] = spec.root @ rotations[root]
        transforms[:, :3, :3] = rotations
        return transforms


def tilt(x: float = 0.0, y: float = 0.0, z: float = 0.0) -> np.ndarray:
    """A root orientation: ``Rz(z) Ry(y) Rx(x)`` degrees (x+ tips the head forward, y+ onto the left side)."""
    return euler_matrix(x, y, z)


__all__ = ["FamilyPoser", "PoseSpec", "rotation_between", "euler_matrix", "tilt", "mirror_name"]
