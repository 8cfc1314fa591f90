"""Rigged, animated glTF 2.0 binary (``.glb``): a skinned mesh per person, its skeleton and motion.

Layout per :class:`~fastmetro.rig.motion.Motion` (person)::

    scene
    ├── <name>            placement node: OPENCV_TO_GLTF @ placement (animated)
    │   └── <root bone>   bone nodes, hierarchy = rig.parents, local TRS in the rig's frame
    │       └── ...
    └── <name>_body       skinned mesh node (no transform: the joints place it)

Axes: glTF is y up with the camera looking down -z; the motion's output frame is OpenCV's camera
(x right, y down, z forward). The change of axes is diag(1, -1, -1), a rotation (180 degrees
about x), so it is folded into each placement node's TRS rather than added as an extra root node:
the bones stay in the rig's own frame and a viewer sees the people as the photo's camera did.

The skinned mesh node sits at the scene root because glTF ignores a skinned mesh node's own
transform and its parents' (the validator warns otherwise); its vertices follow the joints:
``v = sum_k w_k * world(joint_k) @ inverseBindMatrix_k @ v_bind``, which with world(joint) =
OPENCV_TO_GLTF @ placement @ bone_pose is :func:`~fastmetro.rig.motion.skin`'s convention.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.io import write_bytes
from fastmetro.rig.motion import Motion, rigid_parts

# OpenCV camera axes -> glTF axes (rotation by 180 degrees about x).
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0])
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_COMPONENTS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_DTYPES = {FLOAT: np.float32, UNSIGNED_BYTE: np.uint8, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32}
# A non-root bone gets a translation channel only where its offset from its parent moves more
# than this (metres); a body's bones keep their lengths, so normally only the root has one.
_STATIC_TRANSLATION = 1e-6


class _Binary:
    """The BIN chunk under construction: one buffer view per accessor, each 4-byte aligned."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def add(self, data: np.ndarray, component: int, kind: str, target: int | None = None, bounds=False) -> int:
        """Append ``data`` ((N, components) or (N,)) as an accessor; returns the accessor's index."""
        array = np.ascontiguousarray(data, _DTYPES[component]).reshape(len(data), _COMPONENTS[kind])
        raw = array.tobytes()
        view: dict[str, Any] = {"buffer": 0, "byteOffset": self.size, "byteLength": len(raw)}
        if target is not None:
            view["target"] = target
        self.chunks.append(raw + b"\0" * (-len(raw) % 4))
        self.size += len(self.chunks[-1])
        self.views.append(view)
        accessor: dict[str, Any] = {
            "bufferView": len(self.views) - 1,
            "componentType": component,
            "count": len(array),
            "type": kind,
        }
        if bounds:  # exact float32 (or integer) values: the validator compares them with the data
            accessor["min"] = [v.item() for v in array.min(axis=0)]
            accessor["max"] = [v.item() for v in array.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def blob(self) -> bytes:
        return b"".join(self.chunks)


def quaternions(rotations: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (x, y, z, w; w >= 0) of (..., 3, 3) rotation matrices.

    Bar-Itzhack's method: the quaternion is the eigenvector of the largest eigenvalue of a
    symmetric 4x4 matrix built from the rotation, so no angle (180 degrees included) divides by a
    small number, and a slightly non-orthogonal input still gives its nearest rotation.
    """
    r = np.asarray(rotations, np.float64)
    xx, xy, xz = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    yx, yy, yz = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    zx, zy, zz = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    rows = [
        [xx - yy - zz, yx + xy, zx + xz, zy - yz],
        [yx + xy, yy - xx - zz, zy + yz, xz - zx],
        [zx + xz, zy + yz, zz - xx - yy, yx - xy],
        [zy - yz, xz - zx, yx - xy, xx + yy + zz],
    ]
    k = np.stack([np.stack(row, -1) for row in rows], -2) / 3.0
    q = np.linalg.eigh(k)[1][..., -1]  # eigenvalues ascending: the last column
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:] < 0, -q, q)


def continuous(q: np.ndarray) -> np.ndarray:
    """(T, ..., 4) quaternions with signs flipped so each frame is within 90 degrees of the last.

    q and -q are the same rotation, but a viewer interpolates between keys along the shorter arc
    only when consecutive keys have a non-negative dot product.
    """
    q = np.array(q, np.float64)
    for t in range(1, len(q)):
        flip = np.sum(q[t] * q[t - 1], axis=-1) < 0
        q[t][flip] *= -1
    return q


def skin_sets(indices: np.ndarray, weights: np.ndarray, num_bones: int) -> tuple[np.ndarray, np.ndarray]:
    """(V, 4n) joints and float32 weights for glTF's JOINTS_i / WEIGHTS_i sets of 4.

    glTF asks for what the rig's skin may not guarantee: a joint at most once per vertex among
    non-zero weights (duplicates are summed into one slot), unused slots with joint 0 and weight 0,
    and weights that sum to 1 in float32 (renormalised, the last rounding put on the largest).
    Slots are sorted by weight, largest first, so a client reading only JOINTS_0 gets the main
    four; n is the fewest sets that hold every vertex's non-zero weights.
    """
    joints = np.asarray(indices).astype(np.int64)
    w = np.asarray(weights, np.float64).copy()
    if not np.isfinite(w).all() or (w < 0).any():
        raise FastMetroError("rig: skin weights must be finite and non-negative")
    if joints.size and (joints.min() < 0 or joints.max() >= num_bones):
        raise FastMetroError(f"rig: skin indices outside 0..{num_bones - 1}")
    for k in range(1, w.shape[1]):
        for m in range(k):
            same = joints[:, m] == joints[:, k]
            w[same, m] += w[same, k]
            w[same, k] = 0.0
    totals = w.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise FastMetroError(f"rig: {int((totals <= 0).sum())} vertices have no skin weight")
    order = np.argsort(-w, axis=1, kind="stable")
    w, joints = np.take_along_axis(w / totals, order, 1), np.take_along_axis(joints, order, 1)
    sets = max(1, math.ceil(int((w > 0).sum(axis=1).max()) / 4))
    w = np.pad(w, ((0, 0), (0, max(0, 4 * sets - w.shape[1]))))[:, : 4 * sets]
    joints = np.pad(joints, ((0, 0), (0, max(0, 4 * sets - joints.shape[1]))))[:, : 4 * sets]
    w32 = w.astype(np.float32)
    joints[w32 == 0] = 0
    rows = np.arange(len(w32))
    for _ in range(3):  # each pass shrinks the float32 sum's error; one usually suffices
        residual = 1.0 - w32.astype(np.float64).sum(axis=1)
        w32[rows, 0] = (w32[rows, 0].astype(np.float64) + residual).astype(np.float32)
    return joints, w32


def _trs(rotation: np.ndarray, translation: np.ndarray) -> dict[str, list[float]]:
    return {"rotation": quaternions(rotation).tolist(), "translation": np.asarray(translation, float).tolist()}


def _local_poses(motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    """(T, J, 3, 3) rotations and (T, J, 3) translations of each bone relative to its parent."""
    rotations, translations = rigid_parts(motion.bone_poses, f"motion {motion.name}: bone_poses")
    parents = np.asarray(motion.rig.parents)
    local_r, local_t = rotations.copy(), translations.copy()
    parent_r = np.swapaxes(rotations[:, parents[1:]], -1, -2)
    local_r[:, 1:] = parent_r @ rotations[:, 1:]
    local_t[:, 1:] = np.einsum("tjab,tjb->tja", parent_r, translations[:, 1:] - translations[:, parents[1:]])
    return local_r, local_t


def _placements(motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, 3), (T, 3): OPENCV_TO_GLTF @ placement, the placement node's TRS per frame."""
    rotations, translations = rigid_parts(motion.placement, f"motion {motion.name}: placement")
    return OPENCV_TO_GLTF @ rotations, translations @ OPENCV_TO_GLTF.T


def _mesh(binary: _Binary, motion: Motion, material: int | None) -> dict[str, Any]:
    rig = motion.rig
    vertices, faces = np.asarray(rig.vertices, np.float64), np.asarray(rig.faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.isfinite(vertices).all():
        raise FastMetroError(f"rig of {motion.name}: vertices {vertices.shape} must be finite (V, 3)")
    if faces.ndim != 2 or faces.shape[1] != 3 or not faces.size or not 0 <= faces.min() <= faces.max() < len(vertices):
        raise FastMetroError(f"rig of {motion.name}: faces {faces.shape} must be (F, 3) indices of the vertices")
    joints, weights = skin_sets(rig.skin_indices, rig.skin_weights, rig.num_bones)
    # Index 65535 is primitive restart for 16-bit indices; 255 likewise for bytes (joints are not indices).
    index_type = UNSIGNED_SHORT if len(vertices) <= 65535 else UNSIGNED_INT
    joint_type = UNSIGNED_BYTE if rig.num_bones <= 256 else UNSIGNED_SHORT
    attributes = {"POSITION": binary.add(vertices, FLOAT, "VEC3", ARRAY_BUFFER, bounds=True)}
    for s in range(joints.shape[1] // 4):
        attributes[f"JOINTS_{s}"] = binary.add(joints[:, 4 * s : 4 * s + 4], joint_type, "VEC4", ARRAY_BUFFER)
        attributes[f"WEIGHTS_{s}"] = binary.add(weights[:, 4 * s : 4 * s + 4], FLOAT, "VEC4", ARRAY_BUFFER)
    primitive: dict[str, Any] = {
        "attributes": attributes,
        "indices": binary.add(faces.reshape(-1), index_type, "SCALAR", ELEMENT_ARRAY_BUFFER, bounds=True),
        "mode": 4,  # triangles
    }
    if material is not None:
        primitive["material"] = material
    return {"name": motion.name, "primitives": [primitive]}


def _animation(binary: _Binary, motion: Motion, fps: float, targets: list[tuple[int, str, np.ndarray]]) -> dict:
    """One animation: ``targets`` = [(node, "rotation" | "translation", (T, 4 | 3) values)]."""
    times = binary.add(np.arange(motion.num_frames) / fps, FLOAT, "SCALAR", bounds=True)
    samplers, channels = [], []
    for node, path, values in targets:
        kind = "VEC4" if path == "rotation" else "VEC3"
        samplers.append({"input": times, "output": binary.add(values, FLOAT, kind), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})
    return {"name": motion.name, "samplers": samplers, "channels": channels}


def _skin(binary: _Binary, motion: Motion, first_bone: int) -> dict[str, Any]:
    """The skin: every bone node a joint, inverse bind matrices = inverse(bind_poses)."""
    rig = motion.rig
    bind_r, bind_t = rigid_parts(rig.bind_poses, f"rig of {motion.name}: bind_poses")
    inverse_bind = np.zeros((rig.num_bones, 4, 4))
    inverse_bind[:, :3, :3] = np.swapaxes(bind_r, -1, -2)
    inverse_bind[:, :3, 3] = -np.einsum("jba,jb->ja", bind_r, bind_t)
    inverse_bind[:, 3, 3] = 1.0
    # glTF matrices are column-major: the transpose's rows are the columns.
    ibm = binary.add(np.swapaxes(inverse_bind, -1, -2).reshape(-1, 16), FLOAT, "MAT4")
    joints = list(range(first_bone, first_bone + rig.num_bones))
    return {"name": motion.name, "joints": joints, "skeleton": first_bone, "inverseBindMatrices": ibm}


def _person(document: dict, binary: _Binary, motion: Motion, fps: float, color) -> list[int]:
    """Add one person's nodes, mesh, skin (and animation); returns the scene's root nodes for it."""
    rig, nodes = motion.rig, document["nodes"]
    local_r, local_t = _local_poses(motion)
    place_r, place_t = _placements(motion)
    placement = len(nodes)
    first_bone = placement + 1
    nodes.append({"name": motion.name, **_trs(place_r[0], place_t[0]), "children": [first_bone]})
    for j, name in enumerate(rig.bone_names):
        nodes.append({"name": name, **_trs(local_r[0, j], local_t[0, j])})
        if j > 0:
            nodes[first_bone + int(rig.parents[j])].setdefault("children", []).append(first_bone + j)
    document["skins"].append(_skin(binary, motion, first_bone))
    material = None
    if color is not None:
        material = len(document["materials"])
        rgba = [*(float(c) for c in color), 1.0]
        pbr = {"baseColorFactor": rgba, "metallicFactor": 0.0, "roughnessFactor": 0.8}
        document["materials"].append({"name": motion.name, "pbrMetallicRoughness": pbr, "doubleSided": True})
    document["meshes"].append(_mesh(binary, motion, material))
    body = {"name": f"{motion.name}_body", "mesh": len(document["meshes"]) - 1, "skin": len(document["skins"]) - 1}
    nodes.append(body)
    if motion.num_frames > 1:
        rotations = continuous(quaternions(local_r))  # (T, J, 4)
        targets = [(placement, "rotation", continuous(quaternions(place_r))), (placement, "translation", place_t)]
        targets += [(first_bone + j, "rotation", rotations[:, j]) for j in range(rig.num_bones)]
        moving = np.abs(local_t - local_t[:1]).max(axis=(0, 2)) > _STATIC_TRANSLATION
        moving[0] = True
        targets += [(first_bone + int(j), "translation", local_t[:, j]) for j in np.flatnonzero(moving)]
        document["animations"].append(_animation(binary, motion, fps, targets))
    return [placement, len(nodes) - 1]


def write_rigged_glb(
    path: str | os.PathLike, motions: Sequence[Motion], fps: float | None = None, colors: Sequence | None = None
) -> Path:
    """Write ``motions`` (one per person) as one rigged, animated glTF binary; atomic.

    fps: frames per second of the animations' time axis (None: each motion's own ``fps``);
    colors: optional RGB (0..1) per motion, a material each (None: no material, the viewer's
    default). A motion with one frame gets no animation (the file holds its pose). Coordinates in
    the file: metres, glTF axes (see the module's docstring). Raises FastMetroError for
    non-rigid or mirrored poses, non-finite values, bad skin data or repeated names.
    """
    if not motions:
        raise FastMetroError("write_rigged_glb: no motion to write")
    names = [m.name for m in motions]
    if len(set(names)) != len(names):
        raise FastMetroError(f"write_rigged_glb: motion names must be unique, got {names}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise FastMetroError(f"write_rigged_glb: fps must be positive, got {fps}")
    if colors is not None and len(colors) != len(motions):
        raise FastMetroError(f"write_rigged_glb: {len(colors)} colours for {len(motions)} motions")
    document: dict[str, Any] = {"asset": {"version": "2.0", "generator": "fastmetro"}, "nodes": []}
    document.update(skins=[], meshes=[], materials=[], animations=[])
    binary = _Binary()
    roots = []
    for index, motion in enumerate(motions):
        color = None if colors is None else colors[index]
        roots += _person(document, binary, motion, motion.fps if fps is None else fps, color)
    document["scenes"], document["scene"] = [{"nodes": roots}], 0
    blob = binary.blob()
    document.update(buffers=[{"byteLength": len(blob)}], bufferViews=binary.views, accessors=binary.accessors)
    return write_bytes(path, glb_bytes({k: v for k, v in document.items() if v != []}, blob))


def glb_bytes(document: dict, blob: bytes) -> bytes:
    """A GLB container: 12-byte header, JSON chunk (space-padded), BIN chunk (zero-padded)."""
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    blob += b"\0" * (-len(blob) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(blob), 0x004E4942) + blob
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks
