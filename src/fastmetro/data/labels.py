"""Label fields of a METRO-format row, validated into a typed :class:`Annotation`.

Released fields (METRO/FastMETRO label tsv, one JSON dict per row):

=================  ===============================================================================
``center``         [x, y] pixels: centre of the person box (pixel centres at integer coordinates)
``scale``          box side / 200 (the crop is a square of side ``200 * scale`` px)
``2d_joints``      (J, 3) [x, y, visibility] pixels; may be nested one level ([[...]])
``has_2d_joints``  0/1
``3d_joints``      (J, 4) [x, y, z, confidence] metres (camera axes: x right, y down, z forward)
``has_3d_joints``  0/1
``pose``           SMPL (72,) / MANO (48,) axis-angle (radians)
``betas``          (10,) shape coefficients
``has_smpl``       0/1 (pose/betas valid)
``gender``         optional "m"/"f"/"n" (unused: the released code evaluates neutral SMPL)
=================  ===============================================================================

fastmetro extension (all optional; absent = released behaviour):

==================  ==============================================================================
``joints_format``   ``"j24"``: the released 24-joint superset (body) -> the topology's 14 joints by
                    ``J24_TO_J14`` (pelvis = index 14); ``"topology"``: already K joints in the
                    topology's order (hands, Anny, synthetic data). When absent it is inferred:
                    24 rows for a topology with K != 24 -> j24, K rows -> topology.
``has_vertices``    0/1: ground-truth full-resolution vertices stored in the shard's side file
``vertices_row``    row of that ``(N, V0, 3)`` ``.npy`` (metres, same camera axes), -1 for none
``camera``          optional intrinsics: {"fx", "fy", "cx", "cy"} pixels of the stored image
==================  ==============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastmetro.conventions import SCALE_UNIT, side_from_scale
from fastmetro.data.tsv.errors import BadRowError

# The released 24-joint superset (R_Ankle .. L_Wrist, Neck, Top_of_Head, Pelvis, Thorax, Spine,
# Jaw, Head, Nose, L_Eye, R_Eye, L_Ear, R_Ear) -> the 14 LSP joints of the body topology.
J24_TO_J14 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18)
J24_PELVIS = 14
JOINT_FORMATS = ("j24", "topology")


@dataclass
class Annotation:
    """A validated label. Arrays are float64; joints are in the *topology's* joint order.

    center: (2,) px; scale: box side / 200; joints_2d: (K, 3) px + visibility or None;
    joints_3d: (K, 4) metres + confidence or None (not yet centred); pose/betas or None;
    camera: (3, 3) intrinsics or None.
    """

    key: str
    center: np.ndarray
    scale: float
    joints_2d: np.ndarray | None
    joints_3d: np.ndarray | None
    pose: np.ndarray | None
    betas: np.ndarray | None
    has_vertices: bool
    vertices_row: int
    joints_format: str
    camera: np.ndarray | None = None
    gender: str | None = None

    @property
    def has_joints_2d(self) -> bool:
        return self.joints_2d is not None

    @property
    def has_joints_3d(self) -> bool:
        return self.joints_3d is not None

    @property
    def has_smpl(self) -> bool:
        return self.pose is not None


# Every number of a label must lie within +-LIMIT: no pixel coordinate, metre or radian is larger,
# and beyond it float32 maths (crops, losses) loses the value or overflows.
LIMIT = 1e6
# A box side (200 * scale) must be at least MIN_BOX_SIDE pixels and at most LIMIT.
MIN_BOX_SIDE = 1.0


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def flag(label: dict, name: str, default: bool, source, key) -> bool:
    """A 0/1 field: 0/1, true/false, 0.0/1.0 or the released one-element list [1]; null = ``default``."""
    value = label.get(name)
    if value is None:
        return default
    if isinstance(value, list) and len(value) == 1:  # some releases store [1]
        value = value[0]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise BadRowError(source, key, f"'{name}' must be 0 or 1, got {_short(value)}")


def vertex_fields(label: dict, source, key) -> tuple[bool, int]:
    """(has_vertices, vertices_row): the row of the shard's vertices ``.npy`` (-1 for none)."""
    has_vertices = flag(label, "has_vertices", False, source, key)
    value = label.get("vertices_row", -1)
    if value is None:
        value = -1
    if isinstance(value, float) and value.is_integer() and abs(value) <= LIMIT:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise BadRowError(
            source, key, f"'vertices_row' must be an integer row (>= 0, or -1 for none), got {_short(value)}"
        )
    if has_vertices and value < 0:
        raise BadRowError(source, key, "has_vertices=1 but 'vertices_row' is missing or negative")
    return has_vertices, value


def _array(label: dict, name: str, source, key, columns: int | None = None) -> np.ndarray:
    """A finite float64 array of JSON numbers within +-LIMIT; (J, columns) or flattened."""
    try:
        array = np.asarray(label[name])
    except (TypeError, ValueError):  # ragged lists
        raise BadRowError(source, key, f"'{name}' is not a numeric array") from None
    if array.dtype.kind not in "iuf" or array.size == 0 and columns is None:
        raise BadRowError(source, key, f"'{name}' is not a numeric array (got {_short(label[name])})")
    array = array.astype(np.float64)
    if columns is not None:
        while array.ndim > 2 and array.shape[0] == 1:  # "may be nested one level"
            array = array[0]
        if array.ndim != 2 or array.shape[1] != columns or array.shape[0] == 0:
            raise BadRowError(source, key, f"'{name}' must have shape (J, {columns}), got {array.shape}")
    else:
        array = array.reshape(-1)
    if not np.isfinite(array).all():
        raise BadRowError(source, key, f"'{name}' contains NaN or inf")
    if np.abs(array).max() > LIMIT:
        raise BadRowError(source, key, f"'{name}' has values beyond +-{LIMIT:g}")
    return array


def _joints_format(label: dict, rows: int, num_joints: int | None, source, key) -> str:
    declared = label.get("joints_format")
    if declared is not None:
        if not isinstance(declared, str) or declared not in JOINT_FORMATS:
            raise BadRowError(source, key, f"joints_format must be one of {JOINT_FORMATS}, got {_short(declared)}")
        return declared
    if rows == 24 and num_joints != 24:
        return "j24"
    return "topology"


def _to_topology_joints(joints: np.ndarray, fmt: str, num_joints: int | None, name: str, source, key) -> np.ndarray:
    if fmt == "j24":
        if joints.shape[0] != 24:
            raise BadRowError(source, key, f"'{name}' has {joints.shape[0]} joints, joints_format j24 needs 24")
        joints = joints[list(J24_TO_J14)]
    if num_joints is not None and joints.shape[0] != num_joints:
        raise BadRowError(source, key, f"'{name}' has {joints.shape[0]} joints, the topology has {num_joints}")
    return joints


def _box(label: dict, image_hw, source, key) -> tuple[np.ndarray, float]:
    """(center (2,) px, scale): the label's box, or the whole image when it has none."""
    if "center" in label or "scale" in label:
        center = _array(label, "center", source, key) if "center" in label else None
        if center is None or center.shape != (2,):
            raise BadRowError(source, key, "'center' must be [x, y]")
        scale_array = _array(label, "scale", source, key) if "scale" in label else None
        if scale_array is None or scale_array.size != 1 or not MIN_BOX_SIDE <= side_from_scale(scale_array[0]) <= LIMIT:
            low, high = MIN_BOX_SIDE / SCALE_UNIT, LIMIT / SCALE_UNIT
            raise BadRowError(source, key, f"'scale' must be one number in [{low:g}, {high:g}] (box side / 200)")
        return center, float(scale_array[0])
    if image_hw is not None:
        height, width = image_hw
        return np.array([(width - 1) / 2.0, (height - 1) / 2.0]), max(height, width) / 200.0
    raise BadRowError(source, key, "label has no 'center'/'scale' box")


def _joints(label: dict, num_joints: int | None, source, key) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """(joints_2d, joints_3d, their joint formats) in the topology's joint order."""
    joints_2d = joints_3d = None
    formats = []
    if "2d_joints" in label and flag(label, "has_2d_joints", True, source, key):
        raw = _array(label, "2d_joints", source, key, columns=3)
        fmt = _joints_format(label, raw.shape[0], num_joints, source, key)
        joints_2d = _to_topology_joints(raw, fmt, num_joints, "2d_joints", source, key)
        formats.append(fmt)
    if "3d_joints" in label and flag(label, "has_3d_joints", True, source, key):
        raw = _array(label, "3d_joints", source, key, columns=4)
        fmt = _joints_format(label, raw.shape[0], num_joints, source, key)
        joints_3d = _to_topology_joints(raw, fmt, num_joints, "3d_joints", source, key)
        formats.append(fmt)
    for name, joints in (("2d_joints", joints_2d), ("3d_joints", joints_3d)):
        if joints is not None and (joints[:, -1] < 0).any():
            raise BadRowError(source, key, f"'{name}' has a negative visibility/confidence (last column)")
    if joints_2d is not None and joints_3d is not None and joints_2d.shape[0] != joints_3d.shape[0]:
        raise BadRowError(source, key, f"2d_joints has {joints_2d.shape[0]} joints but 3d_joints {joints_3d.shape[0]}")
    return joints_2d, joints_3d, formats


def _body_parameters(label: dict, pose_sizes, source, key) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(pose, betas) when ``has_smpl``, else (None, None)."""
    if not flag(label, "has_smpl", False, source, key):
        return None, None
    if "pose" not in label or "betas" not in label:
        raise BadRowError(source, key, "has_smpl=1 but 'pose' or 'betas' is missing")
    pose = _array(label, "pose", source, key)
    betas = _array(label, "betas", source, key)
    if pose_sizes is not None and pose.size not in pose_sizes:
        raise BadRowError(source, key, f"'pose' has {pose.size} values, expected one of {pose_sizes}")
    if betas.size < 1 or betas.size > 300:
        raise BadRowError(source, key, f"'betas' has {betas.size} values")
    return pose, betas


def _camera(label: dict, source, key) -> np.ndarray | None:
    """(3, 3) intrinsics from ``camera`` {fx, fy, cx, cy} (numbers, positive focal lengths), or None."""
    intrinsics = label.get("camera")
    if intrinsics is None:
        return None
    values = [intrinsics.get(name) for name in ("fx", "fy", "cx", "cy")] if isinstance(intrinsics, dict) else []
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise BadRowError(source, key, "'camera' must be {fx, fy, cx, cy} numbers")
    numbers = [float(v) for v in values if v is not None]  # all four are numbers (checked above)
    fx, fy, cx, cy = numbers
    if not np.isfinite(numbers).all() or fx <= 0 or fy <= 0 or max(map(abs, numbers)) > LIMIT:
        raise BadRowError(
            source, key, f"'camera' intrinsics must be finite, within +-{LIMIT:g}, with positive focal lengths"
        )
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)


def parse_annotation(
    label: dict,
    key: str,
    source: str = "<label>",
    num_joints: int | None = None,
    image_hw: tuple[int, int] | None = None,
    pose_sizes: tuple[int, ...] | None = (72, 48),
) -> Annotation:
    """Validate a label dict and convert its joints to the topology's K joints.

    ``num_joints`` None (``data check`` without a topology) only checks internal consistency.
    ``image_hw`` supplies the default box (whole image) when center/scale are absent.
    ``pose_sizes``: accepted pose lengths (None = any; the pose is unused without a body model).
    Raises :class:`BadRowError` naming ``source`` and ``key``.
    """
    center, scale = _box(label, image_hw, source, key)
    joints_2d, joints_3d, formats = _joints(label, num_joints, source, key)
    pose, betas = _body_parameters(label, pose_sizes, source, key)
    has_vertices, vertices_row = vertex_fields(label, source, key)
    camera = _camera(label, source, key)
    gender = label.get("gender")
    if gender is not None and not isinstance(gender, str):
        raise BadRowError(source, key, f"'gender' must be a string, got {_short(gender)}")
    return Annotation(
        key=key,
        center=center,
        scale=scale,
        joints_2d=joints_2d,
        joints_3d=joints_3d,
        pose=pose,
        betas=betas,
        has_vertices=has_vertices,
        vertices_row=vertices_row,
        joints_format=formats[0] if formats else str(label.get("joints_format", "topology")),
        camera=camera,
        gender=None if gender is None else str(gender),
    )
