"""MANO hand joints: the real regressor from a user's MANO model file, or a geometric stand-in.

MANO's ``J_regressor`` (16 x 778) lives in the licensed ``MANO_RIGHT.pkl``. When the user has
it, :func:`read_mano_joint_regressor` reads it (``.pkl`` through
:func:`fastmetro.model_files.read_model_pickle`, the one restricted reader of SMPL/MANO pickles,
or an ``.npz`` holding ``J_regressor``).

Without it, :func:`approximate_mano_regressor` estimates the 16 joints from the template's
geometry alone: the wrist is the centre of the open wrist rim, and each finger's three joints
are centroids of the mesh's geodesic rings around its fingertip vertex, at distances set by
typical phalanx proportions (fractions of the fingertip-to-wrist geodesic length). It gives
plausible joint positions for training and visualisation, but it is not MANO's regressor
(not measured against it: the real file is not available here); use the real one for
benchmark numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fastmetro.errors import FastMetroError
from fastmetro.io import load_npz
from fastmetro.model_files import chumpy_to_numpy, read_model_pickle

# MANO joint order: wrist, index 1-3, middle 1-3, pinky 1-3, ring 1-3, thumb 1-3.
# Per finger: (MANO joint rows from knuckle to distal, fingertip vertex, geodesic fractions of
# tip->wrist length at which those joints sit, knuckle first). Fractions follow typical adult
# phalanx lengths (e.g. middle finger: distal joint ~2 cm, middle ~5 cm, knuckle ~9 cm from the
# tip of a ~19 cm tip-to-wrist path).
MANO_FINGERS = {
    "index": ((1, 2, 3), 317, (0.47, 0.26, 0.12)),
    "middle": ((4, 5, 6), 445, (0.48, 0.26, 0.115)),
    "pinky": ((7, 8, 9), 673, (0.44, 0.25, 0.12)),
    "ring": ((10, 11, 12), 556, (0.47, 0.26, 0.12)),
    "thumb": ((13, 14, 15), 745, (0.80, 0.48, 0.21)),
}
RING_WIDTH = 0.006  # metres: half-width of the geodesic band averaged into a joint


def _boundary_vertices(faces: np.ndarray) -> np.ndarray:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    return np.unique(unique[counts == 1])


def _geodesic_from(vertices: np.ndarray, faces: np.ndarray, source: int) -> np.ndarray:
    """Shortest edge-path distance (metres) from ``source`` to every vertex."""
    from scipy.sparse.csgraph import dijkstra

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
    graph = sp.coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(len(vertices),) * 2).tocsr()
    return dijkstra(graph, directed=False, indices=source)  # type: ignore[call-overload]  # scipy-stubs: int indices


def approximate_mano_regressor(template: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(16, 778) geometric stand-in for MANO's J_regressor (rows non-negative, summing to 1).

    Args:
        template: (778, 3) MANO template vertices (metres).
        faces: (1538, 3) MANO faces (open at the wrist).
    """
    template = np.asarray(template, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    regressor = np.zeros((16, len(template)))
    rim = _boundary_vertices(faces)
    if len(rim) == 0:
        raise FastMetroError("MANO template has no open wrist rim; cannot place the wrist joint")
    regressor[0, rim] = 1.0 / len(rim)
    for rows, tip, fractions in MANO_FINGERS.values():
        distance = _geodesic_from(template, faces, tip)
        length = distance[rim].min()
        for row, fraction in zip(rows, fractions):
            target = fraction * length
            band = np.flatnonzero(np.abs(distance - target) < RING_WIDTH)
            if len(band) == 0:
                band = np.array([np.argmin(np.abs(distance - target))])
            regressor[row, band] = 1.0 / len(band)
    return regressor


def _as_array(value, source: str, key: str) -> np.ndarray:
    if sp.issparse(value):
        return value.toarray()  # type: ignore[attr-defined]  # scipy-stubs: issparse narrows to SparseABC
    try:
        value = chumpy_to_numpy(value)  # a chumpy array: evaluated to numpy
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise FastMetroError(f"{source}: cannot evaluate chumpy array '{key}' ({error})") from None
    if not isinstance(value, np.ndarray):
        raise FastMetroError(f"{source}: '{key}' is not an array")
    return np.asarray(value, dtype=np.float64)


def read_mano_joint_regressor(path: str | os.PathLike) -> np.ndarray:
    """MANO's (16, 778) ``J_regressor`` from ``MANO_RIGHT.pkl`` or an ``.npz`` holding it."""
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: MANO model file not found")
    if path.suffix == ".npz":
        arrays = load_npz(path, keys=["J_regressor"])
        if "J_regressor" not in arrays:
            raise FastMetroError(f"{path}: no 'J_regressor' array")
        regressor = np.asarray(arrays["J_regressor"], dtype=np.float64)
    else:
        data = read_model_pickle(path, "MANO model")
        if "J_regressor" not in data:
            raise FastMetroError(f"{path}: not a MANO model (no 'J_regressor')")
        regressor = _as_array(data["J_regressor"], str(path), "J_regressor")
    if regressor.shape != (16, 778):
        raise FastMetroError(f"{path}: J_regressor has shape {regressor.shape}, expected (16, 778)")
    return regressor
