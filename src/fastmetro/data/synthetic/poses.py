"""Random plausible poses for the Anny rig, and a cheap self-intersection test.

Anny's default pose parameterisation (``"local-ref"``) gives every bone a 4x4 *delta transform*
whose rotation is expressed in the world-aligned frame of the rest pose, carried along by the
parent bones. Anny's world frame: **x = the body's left, y = backwards, z = up**; the rest pose is
an A-pose (arms ~45 degrees down, palms in). So one table of anatomical ranges works for every
bone, written for the LEFT side and mirrored for the right (a mirror in the x = 0 plane keeps
rotations about x and negates those about y and z).

Ranges of motion (degrees), sampled per joint as ``R = Rz(c) @ Ry(b) @ Rx(a)``:

=================  ====================  ==================  ==================  ====================
joint (Anny bone)  x: sagittal           y: frontal          z: transverse       notes
=================  ====================  ==================  ==================  ====================
spine05..spine01   -14..+6 each          -6..+6 each         -9..+9 each         5 segments share the
                   (- = bend forward)    (side bend)         (twist)             trunk's ~70/30/45
neck01..neck03     -12..+10 each         -7..+7 each         -15..+15 each
head               -20..+20              -12..+12            -25..+25
clavicle           -6..+6                -12..+6             -10..+10            (- = shrug up)
upperarm01         -150..+45             -95..+35            -50..+50            x-: raise forward;
(shoulder)         (flexion/extension)   (- = abduction)     (rotation)          y from the A-pose
lowerarm01 elbow   hinge 0..145 about the axis (forearm x forward), flexion towards the front
lowerarm02         forearm twist about its own axis -60..+60
wrist              -60..+60              -25..+25            -15..+15
upperleg01 (hip)   -110..+25             -40..+20            -35..+35            x-: leg forward;
                   (flexion/extension)   (- = abduction)     (rotation)
lowerleg01 knee    hinge 0..140 about the axis (shank x backward), flexion towards the back
foot (ankle)       -20..+40              -12..+12            -15..+15            x+: toes down
root               -15..+15              -15..+15            0                   whole-body lean
fingers            one curl per hand, 0..70 per joint, about each phalanx's flexion axis
=================  ====================  ==================  ==================  ====================

Deviations from the neutral pose are drawn from a normal distribution truncated to the range
(sigma = half the range side) and scaled by a per-sample "activity" in [0.25, 1], so most
samples are everyday poses and a few reach the limits. Hinges are drawn from a half-normal.

Self-intersections: :class:`IntersectionTest` splits the mesh into body parts by dominant
skinning bone and rejects a pose when a sample of one part's vertices lies deeper than a few
centimetres inside a non-adjacent part (inside = behind the nearest surface point along its
normal). Cheap (a KD-tree per part over ~1/8 of the vertices), catches legs through legs and
hands through the torso, lets touching pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

# Left-side ranges in degrees: bone -> ((x_lo, x_hi), (y_lo, y_hi), (z_lo, z_hi), neutral xyz).
BALL_JOINTS: dict[
    str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float, float]]
] = {
    "spine05": ((-14, 6), (-6, 6), (-9, 9), (0, 0, 0)),
    "spine04": ((-14, 6), (-6, 6), (-9, 9), (0, 0, 0)),
    "spine03": ((-14, 6), (-6, 6), (-9, 9), (0, 0, 0)),
    "spine02": ((-14, 6), (-6, 6), (-9, 9), (0, 0, 0)),
    "spine01": ((-14, 6), (-6, 6), (-9, 9), (0, 0, 0)),
    "neck01": ((-12, 10), (-7, 7), (-15, 15), (0, 0, 0)),
    "neck02": ((-12, 10), (-7, 7), (-15, 15), (0, 0, 0)),
    "neck03": ((-12, 10), (-7, 7), (-15, 15), (0, 0, 0)),
    "head": ((-20, 20), (-12, 12), (-25, 25), (0, 0, 0)),
    "clavicle.L": ((-6, 6), (-12, 6), (-10, 10), (0, 0, 0)),
    "upperarm01.L": ((-150, 45), (-95, 35), (-50, 50), (-10, 20, 0)),
    "wrist.L": ((-60, 60), (-25, 25), (-15, 15), (0, 0, 0)),
    "upperleg01.L": ((-110, 25), (-40, 20), (-35, 35), (0, 0, 0)),
    "foot.L": ((-20, 40), (-12, 12), (-15, 15), (0, 0, 0)),
}
ROOT_LEAN = ((-15, 15), (-15, 15), (0, 0))
# Hinges: bone -> (range in degrees, direction the child segment moves: "front" or "back").
HINGES = {
    "lowerarm01.L": ((0, 145), "front"),
    "lowerleg01.L": ((0, 140), "back"),
}
TWISTS = {"lowerarm02.L": (-60, 60)}
FINGER_CURL = (0, 70)
ACTIVITY = (0.25, 1.0)

FRONT = np.array([0.0, -1.0, 0.0])
BACK = np.array([0.0, 1.0, 0.0])


def mirror_name(name: str) -> str:
    """``'upperarm01.L'`` -> ``'upperarm01.R'`` (names without a side are unchanged)."""
    if name.endswith(".L"):
        return name[:-2] + ".R"
    if name.endswith(".R"):
        return name[:-2] + ".L"
    return name


def _truncated_normal(rng: np.random.Generator, low: float, high: float, centre: float, scale: float) -> float:
    """A normal draw around ``centre`` (sigma = half the wider side x scale), clipped to [low, high]."""
    sigma = max(high - centre, centre - low) * 0.5 * scale
    if sigma <= 0:
        return min(max(centre, low), high)
    return min(max(float(rng.normal(centre, sigma)), low), high)


@dataclass(frozen=True)
class Skeleton:
    """What the pose sampler needs to know about the rig (from one Anny rest pose).

    bone_labels: J names; bone_heads: (J, 3) rest joint positions (metres, Anny world);
    children: bone index -> index of its first child (for segment directions), -1 for leaves.
    """

    bone_labels: tuple[str, ...]
    bone_heads: np.ndarray
    children: tuple[int, ...]

    @staticmethod
    def from_parents(bone_labels, bone_heads, bone_parents) -> Skeleton:
        children = [-1] * len(bone_labels)
        for index, parent in enumerate(bone_parents):
            if parent >= 0 and children[parent] == -1:
                children[parent] = index
        return Skeleton(tuple(bone_labels), np.asarray(bone_heads, np.float64), tuple(children))

    def index(self, name: str) -> int:
        return self.bone_labels.index(name)

    def direction(self, name: str) -> np.ndarray:
        """Unit rest direction of a bone (head -> its first child's head)."""
        index = self.index(name)
        child = self.children[index]
        vector = self.bone_heads[child] - self.bone_heads[index]
        return vector / np.linalg.norm(vector)


class PoseSampler:
    """Draws (J, 4, 4) local-ref delta transforms within the documented ranges of motion."""

    def __init__(self, skeleton: Skeleton):
        self.skeleton = skeleton
        self.num_bones = len(skeleton.bone_labels)
        self._ball = []  # (bone index, ranges, neutral, mirrored)
        for name, (*ranges, neutral) in BALL_JOINTS.items():
            self._ball.append((skeleton.index(name), ranges, neutral, False))
            if name.endswith(".L"):
                self._ball.append((skeleton.index(mirror_name(name)), ranges, neutral, True))
        self._hinges = []  # (bone index, unit axis, range)
        for name, (limits, towards) in HINGES.items():
            for side_name in (name, mirror_name(name)):
                direction = skeleton.direction(side_name)
                target = FRONT if towards == "front" else BACK
                axis = np.cross(direction, target)  # +angle turns the segment towards ``target``
                self._hinges.append((skeleton.index(side_name), axis / np.linalg.norm(axis), limits))
        self._twists = []
        for name, limits in TWISTS.items():
            for side_name in (name, mirror_name(name)):
                self._twists.append((skeleton.index(side_name), skeleton.direction(side_name), limits))
        self._fingers: dict[str, list[tuple[int, np.ndarray]]] = {"L": [], "R": []}  # (bone index, flexion axis)
        for side in ("L", "R"):
            palm_normal = self._palm_normal(side)
            for digit in range(1, 6):
                for phalanx in range(1, 4):
                    name = f"finger{digit}-{phalanx}.{side}"
                    if name not in skeleton.bone_labels or skeleton.children[skeleton.index(name)] < 0:
                        continue
                    axis = np.cross(skeleton.direction(name), palm_normal)
                    if np.linalg.norm(axis) > 1e-6:
                        self._fingers[side].append((skeleton.index(name), axis / np.linalg.norm(axis)))
        self._root = skeleton.index("root")

    def _palm_normal(self, side: str) -> np.ndarray:
        """Unit normal of the palm (towards where the fingers curl), from the rest metacarpals."""
        skeleton = self.skeleton
        wrist = skeleton.bone_heads[skeleton.index(f"wrist.{side}")]
        index_base = skeleton.bone_heads[skeleton.index(f"finger2-1.{side}")]
        little_base = skeleton.bone_heads[skeleton.index(f"finger5-1.{side}")]
        normal = np.cross(index_base - wrist, little_base - wrist)
        if side == "R":
            normal = -normal
        # In the A-pose the palms face the thighs: the normal must point towards the body.
        towards_body = -np.sign(wrist[0]) * np.array([1.0, 0.0, 0.0])
        if normal @ towards_body < 0:
            normal = -normal
        return normal / np.linalg.norm(normal)

    def sample(self, rng: np.random.Generator, activity: float | None = None, lean: bool = True) -> np.ndarray:
        """One pose: (J, 4, 4) float32 delta transforms (rotations only).

        ``activity`` (default: drawn in ACTIVITY) scales every deviation from the neutral pose;
        ``lean=False`` leaves the root unrotated (a pose family sets it).
        """
        if activity is None:
            activity = rng.uniform(*ACTIVITY)
        rotations = np.tile(np.eye(3), (self.num_bones, 1, 1))
        ball_indices, ball_angles = [], []
        for index, ranges, neutral, mirrored in self._ball:
            angles = [_truncated_normal(rng, lo, hi, centre, activity) for (lo, hi), centre in zip(ranges, neutral)]
            if mirrored:
                angles[1], angles[2] = -angles[1], -angles[2]
            ball_indices.append(index)
            ball_angles.append(angles[::-1])  # (z, y, x) for R = Rz Ry Rx
        rotations[ball_indices] = Rotation.from_euler("ZYX", ball_angles, degrees=True).as_matrix()
        axis_indices, rotvecs = [], []
        for index, axis, (low, high) in self._hinges:
            angle = min(abs(rng.normal(0.0, (high - low) * 0.45 * activity)), high) + low
            axis_indices.append(index)
            rotvecs.append(axis * np.radians(angle))
        for index, axis, (low, high) in self._twists:
            axis_indices.append(index)
            rotvecs.append(axis * np.radians(_truncated_normal(rng, low, high, 0.0, activity)))
        for side in ("L", "R"):
            curl = np.radians(rng.uniform(*FINGER_CURL) * rng.uniform(0.0, 1.0))
            for index, axis in self._fingers[side]:
                axis_indices.append(index)
                rotvecs.append(axis * curl)
        rotations[axis_indices] = Rotation.from_rotvec(rotvecs).as_matrix()
        if lean:
            angles = [rng.uniform(lo, hi) * activity for lo, hi in ROOT_LEAN]
            rotations[self._root] = Rotation.from_euler("ZYX", angles[::-1], degrees=True).as_matrix()
        transforms = np.tile(np.eye(4, dtype=np.float32), (self.num_bones, 1, 1))
        transforms[:, :3, :3] = rotations
        return transforms


# Body parts for the intersection test: dominant-bone name prefixes -> part.
PART_OF_BONE_PREFIX = (
    ("upperarm", "upperarm"),
    ("lowerarm", "forearm"),
    ("wrist", "forearm"),
    ("finger", "forearm"),
    ("metacarpal", "forearm"),
    ("upperleg", "thigh"),
    ("lowerleg", "shank"),
    ("foot", "shank"),
    ("toe", "shank"),
    ("neck", "head"),
    ("head", "head"),
    ("eye", "head"),
    ("tongue", "head"),
    ("jaw", "head"),
)
# Parts allowed to overlap (they share a joint and bend into each other).
ADJACENT = {
    frozenset(pair)
    for pair in [
        ("torso", "head"),
        ("torso", "upperarm.L"),
        ("torso", "upperarm.R"),
        ("upperarm.L", "forearm.L"),
        ("upperarm.R", "forearm.R"),
        ("torso", "thigh.L"),
        ("torso", "thigh.R"),
        ("thigh.L", "shank.L"),
        ("thigh.R", "shank.R"),
        ("thigh.L", "thigh.R"),  # the crotch: inner thighs touch at rest
    ]
}


def part_name(bone: str) -> str:
    side = bone[-2:] if bone.endswith((".L", ".R")) else ""
    for prefix, part in PART_OF_BONE_PREFIX:
        if bone.startswith(prefix):
            return part + side if part != "head" else "head"
    return "torso"  # root, pelvis, spine, clavicle, shoulder, breast...


class IntersectionTest:
    """Rejects poses where one body part sinks into a non-adjacent one.

    vertex_parts: (V,) part name per vertex (from the dominant skinning bone). ``rest``:
    optional (vertices, normals) of the rest pose; pairs that already touch there (hands on
    heavy thighs) are not tested, or every pose would be rejected.
    """

    def __init__(self, vertex_parts: np.ndarray, stride: int = 8, depth: float = 0.025, rest=None):
        self.depth = depth
        names = sorted(set(np.asarray(vertex_parts).tolist()))
        self.parts = {name: np.flatnonzero(vertex_parts == name)[::2] for name in names}
        self.samples = {name: np.flatnonzero(vertex_parts == name)[::stride] for name in names}
        self.pairs = [(a, b) for a in names for b in names if a != b and frozenset((a, b)) not in ADJACENT]
        if rest is not None:
            depths = self._pair_depths(*rest)
            self.pairs = [pair for pair, value in zip(self.pairs, depths) if value <= depth]

    def _pair_depths(self, vertices: np.ndarray, normals: np.ndarray) -> list[float]:
        trees = {part: cKDTree(vertices[indices]) for part, indices in self.parts.items()}
        boxes = {part: (vertices[i].min(0), vertices[i].max(0)) for part, i in self.parts.items()}
        depths = []
        for inner, outer in self.pairs:
            points = vertices[self.samples[inner]]
            low, high = boxes[outer]
            points = points[((points >= low) & (points <= high)).all(1)]  # only these can be inside
            if not len(points):
                depths.append(0.0)
                continue
            distance, nearest = trees[outer].query(points, k=1)
            distance, nearest = np.asarray(distance), self.parts[outer][nearest]
            # Inside = behind the nearest surface point (against its outward normal).
            inside = np.einsum("ij,ij->i", points - vertices[nearest], normals[nearest]) < 0
            depths.append(float(distance[inside].max()) if inside.any() else 0.0)
        return depths

    def penetration(self, vertices: np.ndarray, normals: np.ndarray) -> float:
        """Deepest penetration (metres) of a sampled vertex of any part into a non-adjacent part.

        vertices, normals: (V, 3) posed mesh and its outward unit vertex normals.
        """
        return max(self._pair_depths(vertices, normals), default=0.0)

    def accepts(self, vertices: np.ndarray, normals: np.ndarray) -> bool:
        return self.penetration(vertices, normals) <= self.depth
