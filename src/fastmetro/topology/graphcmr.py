"""Built-in SMPL and MANO topologies from the files the released FastMETRO code ships.

Those files were made by GraphCMR/METRO from the licensed SMPL/MANO models:

- ``smpl/mesh_downsampling.npz``: ``A`` (adjacency 6890/1723/431), ``U`` (upsampling),
  ``D`` (downsampling = vertex selection), ``F`` (faces per level), ``M`` (pickled meshes; their
  ``v`` arrays are the SMPL template). ``smpl/J_regressor_h36m_correct.npy`` (17 x 6890).
- ``mano/mano_downsampling.npz``: ``A, F, U, D, V`` for 778/195/49/13/4 vertices.

All pickled members are read with the restricted unpickler (numpy/scipy classes only, plus an
inert stand-in for the mesh class of ``M``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fastmetro.errors import FastMetroError
from fastmetro.io import PickledObject, load_npy, load_npz_restricted, numpy_scipy_classes
from fastmetro.topology.mano import approximate_mano_regressor, read_mano_joint_regressor
from fastmetro.topology.topology import Topology, mirror_permutation

# 14 evaluation joints (LSP order) used by METRO/FastMETRO for the body.
BODY_JOINT_NAMES = (
    "R_Ankle", "R_Knee", "R_Hip", "L_Hip", "L_Knee", "L_Ankle",
    "R_Wrist", "R_Elbow", "R_Shoulder", "L_Shoulder", "L_Elbow", "L_Wrist",
    "Neck", "Head",
)  # fmt: skip
BODY_JOINT_FLIP = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13)
BODY_ROOT_JOINTS = (2, 3)  # mid-hip
# Rows of the 17-joint H36M regressor giving the 14 joints above (pelvis = row 0).
H36M_J17_TO_J14 = (3, 2, 1, 4, 5, 6, 16, 15, 14, 11, 12, 13, 8, 10)
H36M_PELVIS = 0

HAND_JOINT_NAMES = (
    "Wrist",
    "Thumb_1", "Thumb_2", "Thumb_3", "Thumb_4",
    "Index_1", "Index_2", "Index_3", "Index_4",
    "Middle_1", "Middle_2", "Middle_3", "Middle_4",
    "Ring_1", "Ring_2", "Ring_3", "Ring_4",
    "Pinky_1", "Pinky_2", "Pinky_3", "Pinky_4",
)  # fmt: skip
# Fingertip vertices of MANO (thumb, index, middle, ring, pinky) and the order that turns
# MANO's 16 regressed joints + 5 tips into the 21 joints above (as the released code does).
MANO_FINGERTIP_VERTICES = (745, 317, 445, 556, 673)
MANO_TO_HAND21 = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)


def _mesh_classes() -> dict:
    allowed = numpy_scipy_classes()
    # `M` pickles psbody meshes (and a __main__ subclass); we only need their arrays.
    allowed[("__main__", "MyMesh")] = PickledObject
    allowed[("psbody.mesh.mesh", "Mesh")] = PickledObject
    return allowed


def _selection_indices(selection: sp.spmatrix, source: str) -> np.ndarray:
    """Column index of the single 1 in each row of a 0/1 vertex-selection matrix."""
    rows: sp.csr_matrix = sp.csr_matrix(selection)  # type: ignore[call-overload]  # scipy-stubs: spmatrix argument
    if np.any(np.diff(rows.indptr) != 1):
        raise FastMetroError(f"{source}: downsampling matrix is not a vertex selection (one entry per row)")
    return rows.indices.astype(np.int64)


def _require_dir(data_dir: str | os.PathLike | None, kind: str, filename: str) -> Path:
    if data_dir is None:
        raise FastMetroError(
            f"the '{kind}' topology needs the directory holding {filename} (the file the released "
            f"FastMETRO code ships); pass data_dir=..."
        )
    path = Path(data_dir) / filename
    if not path.is_file():
        raise FastMetroError(f"{path}: file not found (needed for the '{kind}' topology)")
    return path


def load_smpl(data_dir: str | os.PathLike | None) -> Topology:
    """SMPL topology 6890 -> 1723 -> 431 with the 14 H36M-regressed joints."""
    npz_path = _require_dir(data_dir, "smpl", "mesh_downsampling.npz")
    regressor_path = _require_dir(data_dir, "smpl", "J_regressor_h36m_correct.npy")
    arrays = load_npz_restricted(npz_path, _mesh_classes(), keys=["A", "U", "D", "F", "M"])
    h36m = load_npy(regressor_path, what="joint regressor")
    counts = tuple(int(a.shape[0]) for a in arrays["A"])
    if h36m.shape != (17, counts[0]):
        raise FastMetroError(f"{regressor_path}: expected shape (17, {counts[0]}), got {h36m.shape}")
    template = np.asarray(arrays["M"][0].v, dtype=np.float64)
    assert data_dir is not None  # _require_dir raised otherwise
    return Topology(
        kind="body",
        loss_faces=_released_loss_faces(Path(data_dir) / "smpl_1723_faces.npy", counts[1]),
        name="smpl",
        level_vertex_counts=counts,
        faces=tuple(np.asarray(f, dtype=np.int64) for f in arrays["F"]),
        kept_indices=tuple(_selection_indices(d, str(npz_path)) for d in arrays["D"]),
        upsample=tuple(arrays["U"]),
        coarse_adjacency=arrays["A"][-1],
        joint_regressor=h36m[list(H36M_J17_TO_J14)],
        joint_names=BODY_JOINT_NAMES,
        joint_flip=np.asarray(BODY_JOINT_FLIP),
        root_joints=BODY_ROOT_JOINTS,
        root_regressor=h36m[H36M_PELVIS],
        vertex_flip=mirror_permutation(template),
        template=template,
    )


def _released_loss_faces(path: Path, num_vertices: int) -> np.ndarray | None:
    """The released edge/normal-loss faces of the 1723-vertex SMPL mesh (``smpl_1723_faces.npy``,
    3,451 faces: GraphCMR's 3,442 level-1 faces and 9 more), or None when the file is absent."""
    if not path.is_file():
        return None
    faces = load_npy(path, what="faces")
    if (
        faces.dtype.kind not in "iu"
        or faces.size == 0
        or faces.ndim != 2
        or faces.shape[1] != 3
        or faces.min() < 0
        or faces.max() >= num_vertices
    ):
        raise FastMetroError(f"{path}: expected (F, 3) face indices below {num_vertices}, got shape {faces.shape}")
    return faces.astype(np.int64)


def mano_joint_regressor(mano_regressor: np.ndarray) -> np.ndarray:
    """21 x 778 hand regressor: MANO's 16 joints + one-hot fingertip rows, reordered."""
    num_vertices = mano_regressor.shape[1]
    tips = np.zeros((len(MANO_FINGERTIP_VERTICES), num_vertices))
    tips[np.arange(len(MANO_FINGERTIP_VERTICES)), MANO_FINGERTIP_VERTICES] = 1.0
    return np.concatenate([np.asarray(mano_regressor, dtype=np.float64), tips])[list(MANO_TO_HAND21)]


def load_mano(
    data_dir: str | os.PathLike | None,
    joint_regressor: np.ndarray | None = None,
    mano_model: str | os.PathLike | None = None,
) -> Topology:
    """MANO right-hand topology 778 -> 195 with 21 joints.

    ``joint_regressor``: MANO's own (16, 778) ``J_regressor``; or ``mano_model``: the path of
    ``MANO_RIGHT.pkl`` (licensed, not shipped) to read it from. Without either, the 16 non-tip
    joints are a geometric approximation (see
    :func:`fastmetro.topology.mano.approximate_mano_regressor`); the 5 fingertips are exact.
    """
    npz_path = _require_dir(data_dir, "mano", "mano_downsampling.npz")
    arrays = load_npz_restricted(npz_path, numpy_scipy_classes(), keys=["A", "U", "D", "F", "V"])
    counts = tuple(int(a.shape[0]) for a in arrays["A"])
    template = np.asarray(arrays["V"][0], dtype=np.float64)

    regressor_source = "mano"
    if joint_regressor is None and mano_model is not None:
        joint_regressor = read_mano_joint_regressor(mano_model)
    if joint_regressor is None:
        joint_regressor = approximate_mano_regressor(template, np.asarray(arrays["F"][0], dtype=np.int64))
        regressor_source = "approximate"
    elif np.shape(joint_regressor) != (16, counts[0]):
        raise FastMetroError(f"MANO joint regressor must have shape (16, {counts[0]}), got {np.shape(joint_regressor)}")
    full = mano_joint_regressor(np.asarray(joint_regressor))
    topology = Topology(
        kind="hand",
        name="mano",
        level_vertex_counts=counts,
        faces=tuple(np.asarray(f, dtype=np.int64) for f in arrays["F"]),
        kept_indices=tuple(_selection_indices(d, str(npz_path)) for d in arrays["D"]),
        upsample=tuple(arrays["U"]),
        coarse_adjacency=arrays["A"][-1],
        joint_regressor=full,
        joint_names=HAND_JOINT_NAMES,
        joint_flip=np.arange(len(HAND_JOINT_NAMES)),  # a right hand has no left/right swap
        root_joints=(0,),
        root_regressor=full[0],
        vertex_flip=None,
        template=template,
        metadata={"joint_regressor": regressor_source},
    )
    # FastMETRO's hand decoder uses the 195-vertex level as its coarse mesh.
    return topology.truncated(2)
