"""The schema of a topology ``.npz``: every array's dtype, shape and size, checked before use.

:func:`check_arrays` runs before any matrix is built from a file, so a damaged or hostile file is a
one-line :class:`~fastmetro.errors.FastMetroError` and never an allocation its header asks for:
every size in the file is bounded by an array the file actually holds (``level_vertex_counts[0]``
must equal the length of ``root_regressor``, ``level_vertex_counts[l + 1]`` the length of
``kept_l``), and every declared matrix shape must equal the one the counts give.
The keys and their meaning are listed in :mod:`fastmetro.topology.topology`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from fastmetro.errors import FastMetroError

_INT64_MAX = np.iinfo(np.int64).max


def _get(arrays: Mapping, key: str, source: str) -> np.ndarray:
    if key not in arrays:
        raise FastMetroError(f"{source}: not a fastmetro topology (missing '{key}')")
    return np.asarray(arrays[key])


def integers(arrays: Mapping, key: str, source: str, ndim: int) -> np.ndarray:
    """An int64 array of ``ndim`` dimensions (an integer dtype in the file, not float or bool)."""
    array = _get(arrays, key, source)
    if array.dtype.kind not in "iu" or array.ndim != ndim:
        raise FastMetroError(f"{source}: '{key}' must be a {ndim}-D integer array, got {array.dtype} {array.shape}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > _INT64_MAX:
        raise FastMetroError(f"{source}: '{key}' holds values beyond int64")
    return array.astype(np.int64)


def numbers(arrays: Mapping, key: str, source: str, shape: tuple) -> np.ndarray:
    """A finite float64 array of exactly ``shape`` (``None`` entries: any size)."""
    array = _get(arrays, key, source)
    if (
        array.dtype.kind not in "iuf"
        or array.ndim != len(shape)
        or any(want is not None and have != want for have, want in zip(array.shape, shape))
    ):
        expected = "(" + ", ".join("N" if n is None else str(n) for n in shape) + ")"
        raise FastMetroError(
            f"{source}: '{key}' has shape {array.shape} ({array.dtype}), expected a numeric {expected} array"
        )
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise FastMetroError(f"{source}: '{key}' has NaN or inf values")
    return array


def text(arrays: Mapping, key: str, source: str) -> str:
    """A 0-d string array as str."""
    array = _get(arrays, key, source)
    if array.dtype.kind != "U" or array.ndim != 0:
        raise FastMetroError(f"{source}: '{key}' must be a string, got {array.dtype} {array.shape}")
    return str(array)


def _shape(arrays: Mapping, key: str, source: str, expected: tuple[int, int]) -> tuple[int, int]:
    shape = tuple(int(n) for n in integers(arrays, key, source, ndim=1))
    if shape != expected:
        raise FastMetroError(f"{source}: '{key}' is {shape}, the level vertex counts give {expected}")
    return shape


def _coo(arrays: Mapping, prefix: str, source: str, shape: tuple[int, int], with_data: bool) -> tuple:
    """(data, row, col, shape) of a sparse matrix stored as COO parts; indices inside ``shape``."""
    row = integers(arrays, f"{prefix}_row", source, ndim=1)
    col = integers(arrays, f"{prefix}_col", source, ndim=1)
    data = numbers(arrays, f"{prefix}_data", source, (len(row),)) if with_data else np.ones(len(row))
    if len(col) != len(row):
        raise FastMetroError(f"{source}: '{prefix}_row' and '{prefix}_col' differ in length")
    if row.size and (row.min() < 0 or row.max() >= shape[0] or col.min() < 0 or col.max() >= shape[1]):
        raise FastMetroError(f"{source}: '{prefix}' has indices outside its {shape} shape")
    return data, row, col, _shape(arrays, f"{prefix}_shape", source, shape)


def level_counts(arrays: Mapping, source: str) -> tuple[int, ...]:
    """Vertex count per level, each bounded by an array of the file (see the module docstring)."""
    counts = integers(arrays, "level_vertex_counts", source, ndim=1)
    if len(counts) < 1 or counts.min() < 1:
        smallest = f", smallest {counts.min()}" if len(counts) else ""
        raise FastMetroError(
            f"{source}: 'level_vertex_counts' must list at least one positive count (got {len(counts)}{smallest})"
        )
    root = _get(arrays, "root_regressor", source)
    if root.ndim != 1 or len(root) != counts[0]:
        raise FastMetroError(f"{source}: 'root_regressor' has shape {root.shape}, level 0 has {counts[0]} vertices")
    for level in range(len(counts) - 1):
        kept = _get(arrays, f"kept_{level}", source)
        if kept.ndim != 1 or len(kept) != counts[level + 1]:
            raise FastMetroError(
                f"{source}: 'kept_{level}' has shape {kept.shape}, level {level + 1} has {counts[level + 1]} vertices"
            )
    return tuple(int(n) for n in counts)


def check_arrays(arrays: Mapping, source: str, format_name: str, max_version: int) -> dict:
    """The validated parts of a topology file, ready for :class:`~fastmetro.topology.Topology`.

    Returns a dict of constructor arguments (COO parts for the sparse matrices, and ``version``);
    raises a one-line :class:`FastMetroError` naming ``source`` and the array.
    """
    if _get(arrays, "format", source).dtype.kind != "U" or str(arrays["format"]) != format_name:
        raise FastMetroError(f"{source}: not a fastmetro topology (format {str(arrays['format'])[:40]!r})")
    version = int(integers(arrays, "version", source, ndim=0))
    if version > max_version:
        raise FastMetroError(f"{source}: topology format version {version} is newer than supported ({max_version})")
    counts = level_counts(arrays, source)
    levels = len(counts)
    optional = {
        key: integers(arrays, key, source, ndim=1) for key in ("vertex_flip", "source_vertex_indices") if key in arrays
    }
    names = _get(arrays, "joint_names", source)
    if names.ndim != 1 or (names.size and names.dtype.kind != "U"):
        raise FastMetroError(f"{source}: 'joint_names' must be a 1-D string array, got {names.dtype} {names.shape}")
    faces = [_faces(arrays, f"faces_{level}", source) for level in range(levels)]
    return {
        "version": version,
        "name": text(arrays, "name", source),
        "level_vertex_counts": counts,
        "faces": tuple(faces),
        "kept_indices": tuple(integers(arrays, f"kept_{level}", source, ndim=1) for level in range(levels - 1)),
        "upsample": tuple(
            _coo(arrays, f"upsample_{level}", source, (counts[level], counts[level + 1]), True)
            for level in range(levels - 1)
        ),
        "coarse_adjacency": _coo(arrays, "coarse_adjacency", source, (counts[-1], counts[-1]), False),
        "joint_regressor": numbers(arrays, "joint_regressor", source, (None, None)),  # shape: Topology.validate
        "joint_names": tuple(str(n) for n in names),
        "joint_flip": integers(arrays, "joint_flip", source, ndim=1),
        "root_joints": tuple(int(j) for j in integers(arrays, "root_joints", source, ndim=1)),
        "root_regressor": numbers(arrays, "root_regressor", source, (counts[0],)),
        "vertex_flip": optional.get("vertex_flip"),
        "template": numbers(arrays, "template", source, (counts[0], 3)) if "template" in arrays else None,
        "source_vertex_indices": optional.get("source_vertex_indices"),
        "metadata": metadata(arrays, source),
        # Files written before `kind` existed: MANO was the only hand topology.
        "kind": text(arrays, "kind", source)
        if "kind" in arrays
        else ("hand" if text(arrays, "name", source) == "mano" else "body"),
        "loss_faces": _faces(arrays, "loss_faces", source) if "loss_faces" in arrays else None,
    }


def _faces(arrays: Mapping, key: str, source: str) -> np.ndarray:
    face = integers(arrays, key, source, ndim=2)
    if face.shape[1] != 3:
        raise FastMetroError(f"{source}: '{key}' must be (F, 3) triangles, got {face.shape}")
    return face


def metadata(arrays: Mapping, source: str) -> dict:
    """The ``metadata_json`` object, or {} when absent."""
    if "metadata_json" not in arrays:
        return {}
    try:
        value = json.loads(text(arrays, "metadata_json", source))
    except (ValueError, RecursionError) as error:
        raise FastMetroError(f"{source}: metadata_json is not valid JSON ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise FastMetroError(f"{source}: metadata_json must hold a JSON object")
    return value
