"""The :class:`Topology` value: everything FastMETRO needs to know about a mesh.

A topology is a pyramid of meshes. Level 0 is the full-resolution mesh (SMPL: 6890 vertices);
each next level keeps a subset of the vertices of the level above (downsampling is vertex
selection, as in COMA/GraphCMR); the last level is the *coarse* mesh whose vertices become the
decoder's vertex tokens (SMPL: 431). ``upsample[l]`` maps level ``l+1`` back to level ``l``.

On disk a topology is a plain ``.npz`` (loads with ``numpy.load(allow_pickle=False)``). Keys:

==========================  ===================================================================
``format``                  ``"fastmetro-topology"`` (0-d str array)
``version``                 format version (0-d int)
``name``                    topology name (0-d str)
``level_vertex_counts``     (L+1,) int64, vertex count per level, level 0 = full mesh
``faces_{l}``               (F_l, 3) int64 triangle indices of level ``l``
``kept_{l}``                (V_{l+1},) int64 indices into level ``l`` of the vertices kept at ``l+1``
``upsample_{l}_{data,row,col,shape}``  COO parts of ``upsample[l]`` (V_l, V_{l+1}) float64
``coarse_adjacency_{row,col,shape}``   COO parts of the symmetric 0/1 coarse adjacency (no self loops)
``joint_regressor``         (K, V_0) float64, joints = R @ vertices (dense)
``joint_names``             (K,) str
``joint_flip``              (K,) int64 left/right swap permutation of joints
``vertex_flip``             (V_0,) int64 mirror permutation of level-0 vertices, or absent
``root_joints``             (R,) int64 joints averaged to centre joint sets (body: hips; hand: wrist)
``root_regressor``          (V_0,) float64 weights of the root point used to centre meshes
``template``                (V_0, 3) float64 rest-pose vertices in metres, or absent
``source_vertex_indices``   (V_0,) int64 index of each level-0 vertex in the source model's
                            output (Anny: its body without eyes/teeth), or absent
``metadata_json``           0-d str, JSON object of build information (quality, timings), or absent
``kind``                    0-d str, ``"body"`` or ``"hand"`` (absent in files written before it
                            existed: then ``"hand"`` for a topology named ``mano``, else ``"body"``)
``loss_faces``              (F, 3) int64 faces of the edge/normal-loss level, when they differ from
                            that level's ``faces_{l}`` (SMPL: the released 3,451-face list), or absent
==========================  ===================================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import cast

import numpy as np
import scipy.sparse as sp

from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write, load_npz
from fastmetro.topology.schema import check_arrays

FORMAT = "fastmetro-topology"
VERSION = 1
KINDS = ("body", "hand")


def _as_index(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and np.all(array == np.round(array))):
        raise FastMetroError(f"topology {name} must hold integer indices")
    out = np.asarray(array, dtype=np.int64)
    out.setflags(write=False)
    return out


def _frozen(array: np.ndarray | None, dtype=np.float64) -> np.ndarray | None:
    if array is None:
        return None
    out = np.array(array, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Topology:
    """An immutable multi-level mesh topology with a joint regressor.

    Attributes (``L`` = number of downsampling steps, ``K`` joints, ``V_l`` vertices at level l):
        name: short identifier ("smpl", "mano", "anny", or a user name).
        level_vertex_counts: (V_0, ..., V_L).
        faces: per level, (F_l, 3) int64.
        kept_indices: per step l < L, (V_{l+1},) indices into level l of the kept vertices.
        upsample: per step l < L, sparse (V_l, V_{l+1}) matrix mapping level l+1 to level l.
        coarse_adjacency: sparse (V_L, V_L) symmetric 0/1 adjacency of the coarsest level,
            without self loops.
        joint_regressor: (K, V_0) dense; joints (metres) = joint_regressor @ vertices (metres).
        joint_names: K names.
        joint_flip: (K,) permutation swapping left and right joints (an involution).
        vertex_flip: (V_0,) permutation mirroring vertices left/right, or None if the mesh is
            not symmetric (e.g. a right hand).
        root_joints: joint indices whose mean is the root used to centre joint sets.
        root_regressor: (V_0,) weights; root point (metres) = root_regressor @ vertices, used to
            centre meshes (SMPL: the H36M pelvis).
        template: (V_0, 3) rest-pose vertices in metres, or None.
        source_vertex_indices: (V_0,) indices of the level-0 vertices in the source body
            model's vertex output, or None when level 0 is the source mesh itself. Anny:
            ``anny_vertices[..., source_vertex_indices, :]`` gives level-0 vertices.
        metadata: JSON-serialisable build information (saved with the topology).
        kind: ``"body"`` or ``"hand"``: what the mesh is (it decides the released recipe:
            augmentation, loss defaults and hand metrics), stated, never guessed from sizes.
        loss_faces: (F, 3) faces of level :attr:`edge_loss_level` for the edge/normal losses when
            they differ from ``faces[edge_loss_level]`` (SMPL: the released 3,451-face list of the
            1723-vertex mesh, 9 more than GraphCMR's level-1 faces), or None.

    A mesh without joints is allowed: K = 0, ``root_joints = ()`` and a root regressor such as
    the vertex centroid (see :func:`fastmetro.topology.build.build_topology`).
    """

    name: str
    level_vertex_counts: tuple[int, ...]
    faces: tuple[np.ndarray, ...]
    kept_indices: tuple[np.ndarray, ...]
    upsample: tuple[sp.csr_matrix, ...]
    coarse_adjacency: sp.csr_matrix
    joint_regressor: np.ndarray
    joint_names: tuple[str, ...]
    joint_flip: np.ndarray
    root_joints: tuple[int, ...]
    root_regressor: np.ndarray
    vertex_flip: np.ndarray | None = None
    template: np.ndarray | None = None
    source_vertex_indices: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    kind: str = "body"
    loss_faces: np.ndarray | None = None

    def __post_init__(self):
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731 (frozen)
        set_("level_vertex_counts", tuple(int(n) for n in self.level_vertex_counts))
        set_("faces", tuple(_as_index(f, "faces").reshape(-1, 3) for f in self.faces))
        set_("kept_indices", tuple(_as_index(k, "kept") for k in self.kept_indices))
        set_("upsample", tuple(sp.csr_matrix(u, dtype=np.float64) for u in self.upsample))
        adjacency = sp.csr_matrix(self.coarse_adjacency, dtype=np.float64)
        adjacency.setdiag(0)
        adjacency.eliminate_zeros()
        adjacency.data[:] = 1.0
        set_("coarse_adjacency", adjacency)
        set_(
            "joint_regressor",
            _frozen(
                sp.csr_matrix(self.joint_regressor).toarray()
                if sp.issparse(self.joint_regressor)
                else self.joint_regressor
            ),
        )
        set_("joint_names", tuple(str(n) for n in self.joint_names))
        set_("joint_flip", _as_index(self.joint_flip, "joint_flip"))
        set_("root_joints", tuple(int(j) for j in self.root_joints))
        set_("root_regressor", _frozen(self.root_regressor))
        set_("vertex_flip", None if self.vertex_flip is None else _as_index(self.vertex_flip, "vertex_flip"))
        set_("template", _frozen(self.template))
        if self.source_vertex_indices is not None:
            set_("source_vertex_indices", _as_index(self.source_vertex_indices, "source_vertex_indices"))
        if self.loss_faces is not None:
            set_("loss_faces", _as_index(self.loss_faces, "loss_faces").reshape(-1, 3))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`FastMetroError` if the parts are inconsistent."""
        counts = self.level_vertex_counts
        levels = len(counts)
        problems = []
        if levels < 1:
            problems.append("no levels")
        elif min(counts) < 1:
            problems.append(f"level vertex counts {counts} must be positive")
        if len(self.faces) != levels:
            problems.append(f"{len(self.faces)} face arrays for {levels} levels")
        if len(self.kept_indices) != levels - 1 or len(self.upsample) != levels - 1:
            problems.append(f"need {levels - 1} kept/upsample entries")
        for level in range(min(levels - 1, len(self.kept_indices), len(self.upsample))):
            kept, up = self.kept_indices[level], self.upsample[level]
            if kept.shape != (counts[level + 1],) or (kept.size and (kept.min() < 0 or kept.max() >= counts[level])):
                problems.append(f"kept_{level} has shape {kept.shape} or indices outside level {level}")
            if up.shape != (counts[level], counts[level + 1]):
                problems.append(f"upsample_{level} has shape {up.shape}, expected {(counts[level], counts[level + 1])}")
        for level, faces in enumerate(self.faces[:levels]):
            if faces.size and (faces.min() < 0 or faces.max() >= counts[level]):
                problems.append(f"faces_{level} index a vertex outside level {level}")
        if self.coarse_adjacency.shape != (counts[-1], counts[-1]):
            problems.append(f"coarse adjacency has shape {self.coarse_adjacency.shape}")
        elif cast(sp.csr_matrix, self.coarse_adjacency != self.coarse_adjacency.T).nnz:  # scipy-stubs: != is sparse
            problems.append("coarse adjacency is not symmetric")
        num_joints = len(self.joint_names)
        if self.joint_regressor.shape != (num_joints, counts[0]):
            problems.append(
                f"joint regressor has shape {self.joint_regressor.shape}, expected {(num_joints, counts[0])}"
            )
        if sorted(self.joint_flip.tolist()) != list(range(num_joints)):
            problems.append("joint_flip is not a permutation of the joints")
        elif np.any(self.joint_flip[self.joint_flip] != np.arange(num_joints)):
            problems.append("joint_flip is not an involution (flipping twice must give the identity)")
        if self.vertex_flip is not None and (
            self.vertex_flip.shape != (counts[0],)
            or self.vertex_flip.min(initial=0) < 0
            or self.vertex_flip.max(initial=0) >= counts[0]  # bounded before bincount allocates max + 1
            or np.any(np.bincount(self.vertex_flip, minlength=counts[0]) != 1)
        ):
            problems.append("vertex_flip is not a permutation of the level-0 vertices")
        elif self.vertex_flip is not None and np.any(self.vertex_flip[self.vertex_flip] != np.arange(counts[0])):
            problems.append("vertex_flip is not an involution (flipping twice must give the identity)")
        if self.root_regressor.shape != (counts[0],):
            problems.append(f"root regressor has shape {self.root_regressor.shape}")
        if num_joints and (not self.root_joints or max(self.root_joints) >= num_joints or min(self.root_joints) < 0):
            problems.append("root_joints must name at least one existing joint")
        if not num_joints and self.root_joints:
            problems.append("root_joints given for a topology without joints")
        if self.source_vertex_indices is not None and (
            self.source_vertex_indices.shape != (counts[0],)
            or len(np.unique(self.source_vertex_indices)) != counts[0]
            or self.source_vertex_indices.min(initial=0) < 0
        ):
            problems.append("source_vertex_indices must be (V_0,) distinct non-negative indices")
        for level, up in enumerate(self.upsample):
            if up.nnz and not np.all(np.isfinite(up.data)):
                problems.append(f"upsample_{level} has non-finite entries")
        if not np.all(np.isfinite(self.joint_regressor)) or not np.all(np.isfinite(self.root_regressor)):
            problems.append("joint or root regressor has non-finite entries")
        if self.template is not None and self.template.shape != (counts[0], 3):
            problems.append(f"template has shape {self.template.shape}")
        elif self.template is not None and not np.all(np.isfinite(self.template)):
            problems.append("template has non-finite entries")
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (
            self.loss_faces is not None
            and levels >= 1
            and self.loss_faces.size
            and (self.loss_faces.min() < 0 or self.loss_faces.max() >= counts[self.edge_loss_level])
        ):
            problems.append(f"loss_faces index a vertex outside level {self.edge_loss_level}")
        if problems:
            raise FastMetroError(f"topology '{self.name}' is inconsistent: " + "; ".join(problems))

    # ------------------------------------------------------------------ sizes
    @property
    def num_levels(self) -> int:
        """Number of mesh levels, including the full mesh (SMPL: 3)."""
        return len(self.level_vertex_counts)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def num_vertices(self) -> int:
        """Vertices of the full mesh (level 0)."""
        return self.level_vertex_counts[0]

    @property
    def num_coarse_vertices(self) -> int:
        """Vertices of the coarsest level (the decoder's vertex tokens)."""
        return self.level_vertex_counts[-1]

    @property
    def is_hand(self) -> bool:
        return self.kind == "hand"

    @property
    def edge_loss_level(self) -> int:
        """The level of the released edge/normal losses: the intermediate mesh of a three-level
        pyramid (SMPL 1723), else the full mesh (MANO 778)."""
        return 1 if self.num_levels >= 3 else 0

    def edge_loss_faces(self, level: int | None = None) -> np.ndarray:
        """Faces for the edge/normal losses on ``level`` (default :attr:`edge_loss_level`)."""
        level = self.edge_loss_level if level is None else level
        if level == self.edge_loss_level and self.loss_faces is not None:
            return self.loss_faces
        return self.faces[level]

    # ------------------------------------------------------------------ derived matrices
    def upsampling_matrix(self, from_level: int, to_level: int = 0) -> sp.csr_matrix:
        """Sparse (V_to, V_from) product of the per-step upsampling matrices."""
        if not 0 <= to_level <= from_level < self.num_levels:
            raise ValueError(f"need 0 <= to_level <= from_level < {self.num_levels}")
        matrix = sp.identity(self.level_vertex_counts[from_level], format="csr")
        for level in range(from_level - 1, to_level - 1, -1):
            matrix = self.upsample[level] @ matrix
        return sp.csr_matrix(matrix)

    def level_indices(self, level: int) -> np.ndarray:
        """(V_level,) indices into level 0 of the vertices that survive at ``level``."""
        indices = np.arange(self.num_vertices)
        for step in range(level):
            indices = indices[self.kept_indices[step]]
        return indices

    def downsample(self, vertices: np.ndarray, level: int) -> np.ndarray:
        """Select the level-``level`` vertices from level-0 vertices (..., V_0, C)."""
        return np.take(vertices, self.level_indices(level), axis=-2)

    @cached_property
    def coarse_faces(self) -> np.ndarray:
        return self.faces[-1]

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT),
            "version": np.array(VERSION),
            "name": np.array(self.name),
            "level_vertex_counts": np.array(self.level_vertex_counts, dtype=np.int64),
            "joint_regressor": np.asarray(self.joint_regressor),
            "joint_names": np.array(self.joint_names, dtype=str),
            "joint_flip": np.asarray(self.joint_flip),
            "root_joints": np.array(self.root_joints, dtype=np.int64),
            "root_regressor": np.asarray(self.root_regressor),
            "kind": np.array(self.kind),
        }
        for level, faces in enumerate(self.faces):
            arrays[f"faces_{level}"] = np.asarray(faces)
        for level, (kept, up) in enumerate(zip(self.kept_indices, self.upsample)):
            arrays[f"kept_{level}"] = np.asarray(kept)
            coo = up.tocoo()
            arrays[f"upsample_{level}_data"] = coo.data
            arrays[f"upsample_{level}_row"] = coo.row.astype(np.int64)
            arrays[f"upsample_{level}_col"] = coo.col.astype(np.int64)
            arrays[f"upsample_{level}_shape"] = np.array(coo.shape, dtype=np.int64)
        adjacency = self.coarse_adjacency.tocoo()
        arrays["coarse_adjacency_row"] = adjacency.row.astype(np.int64)
        arrays["coarse_adjacency_col"] = adjacency.col.astype(np.int64)
        arrays["coarse_adjacency_shape"] = np.array(adjacency.shape, dtype=np.int64)
        if self.vertex_flip is not None:
            arrays["vertex_flip"] = np.asarray(self.vertex_flip)
        if self.template is not None:
            arrays["template"] = np.asarray(self.template)
        if self.source_vertex_indices is not None:
            arrays["source_vertex_indices"] = np.asarray(self.source_vertex_indices)
        if self.loss_faces is not None:
            arrays["loss_faces"] = np.asarray(self.loss_faces)
        if self.metadata:
            arrays["metadata_json"] = np.array(json.dumps(self.metadata, sort_keys=True))
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write the topology as an ``.npz`` (atomically). Returns the path."""
        path = Path(path)
        with atomic_write(path) as handle:
            np.savez_compressed(handle, **self.to_arrays())  # type: ignore[arg-type]  # numpy stub: **kwargs meet allow_pickle
        return path

    @classmethod
    def from_arrays(cls, arrays, source: str = "<arrays>") -> Topology:
        """A topology from the arrays of a saved file, checked first by
        :func:`~fastmetro.topology.schema.check_arrays`."""
        parts = check_arrays(arrays, source, FORMAT, VERSION)
        parts.pop("version")
        parts["upsample"] = tuple(
            sp.coo_matrix((data, (row, col)), shape=shape).tocsr() for data, row, col, shape in parts["upsample"]
        )
        data, row, col, shape = parts["coarse_adjacency"]
        parts["coarse_adjacency"] = sp.coo_matrix((data, (row, col)), shape=shape)
        return cls(**parts)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Topology:
        """Read a topology ``.npz`` written by :meth:`save` (no pickle involved).

        Every array is checked (dtypes, shapes, sizes bounded by the file, finite values) before
        it is used; a damaged file is a one-line :class:`FastMetroError` naming it.
        """
        path = Path(path)
        if not path.is_file():
            raise FastMetroError(f"{path}: topology file not found")
        arrays = load_npz(path)
        try:
            return cls.from_arrays(arrays, source=str(path))
        except FastMetroError as error:
            message = str(error)
            raise FastMetroError(message if message.startswith(str(path)) else f"{path}: {message}") from None
        except (ValueError, TypeError, IndexError) as error:  # arrays of the wrong kind
            raise FastMetroError(f"{path}: malformed topology ({error})") from None

    def truncated(self, num_levels: int) -> Topology:
        """The same topology keeping only the first ``num_levels`` levels (MANO: 778 -> 195)."""
        if not 1 <= num_levels <= self.num_levels:
            raise ValueError(f"num_levels must be in 1..{self.num_levels}")
        if num_levels == self.num_levels:
            return self
        return Topology(
            name=self.name,
            level_vertex_counts=self.level_vertex_counts[:num_levels],
            faces=self.faces[:num_levels],
            kept_indices=self.kept_indices[: num_levels - 1],
            upsample=self.upsample[: num_levels - 1],
            coarse_adjacency=adjacency_from_faces(self.faces[num_levels - 1], self.level_vertex_counts[num_levels - 1]),
            joint_regressor=self.joint_regressor,
            joint_names=self.joint_names,
            joint_flip=self.joint_flip,
            root_joints=self.root_joints,
            root_regressor=self.root_regressor,
            vertex_flip=self.vertex_flip,
            template=self.template,
            source_vertex_indices=self.source_vertex_indices,
            metadata=dict(self.metadata),
            kind=self.kind,
        )

    def __repr__(self) -> str:
        return (
            f"Topology(name={self.name!r}, kind={self.kind!r}, levels={self.level_vertex_counts}, "
            f"joints={self.num_joints}, "
            f"flip={'yes' if self.vertex_flip is not None else 'no'})"
        )


def adjacency_from_faces(faces: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Symmetric 0/1 vertex adjacency (no self loops) of a triangle mesh."""
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    adjacency = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_vertices, num_vertices)).tocsr()
    adjacency.data[:] = 1.0
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    return adjacency


def mirror_permutation(
    vertices: np.ndarray, axis: int = 0, tolerance: float = 0.02, midline: float = 1e-4
) -> np.ndarray | None:
    """Involutive permutation mapping each vertex to its mirror image across ``x[axis] = 0``.

    Vertices with ``x[axis] > midline`` are matched one-to-one with mirrored vertices on the
    other side by a minimum-total-distance bipartite matching (so near-symmetric meshes such as
    the SMPL template, whose nearest mirror neighbours are not unique, still get a true
    permutation); a matched pair swaps, every other vertex maps to itself. The result is an
    involution by construction (``flip[flip] == arange(V)``).

    Returns None if the mesh is not mirror-symmetric: some matched pair is further than
    ``tolerance`` (metres) from mirror images, or too few vertices can be matched.
    """
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching
    from scipy.spatial import cKDTree

    vertices = np.asarray(vertices, dtype=np.float64)
    num_vertices = len(vertices)
    positive = np.flatnonzero(vertices[:, axis] > midline)
    negative = np.flatnonzero(vertices[:, axis] < -midline)
    flip = np.arange(num_vertices, dtype=np.int64)
    if len(positive) == 0 and len(negative) == 0:
        return flip
    if min(len(positive), len(negative)) < 0.9 * max(len(positive), len(negative)):
        return None
    # Candidate pairs: mirror neighbours within `tolerance`, seen from both sides.
    mirrored_negative = vertices[negative].copy()
    mirrored_negative[:, axis] *= -1
    positive_tree, negative_tree = cKDTree(vertices[positive]), cKDTree(mirrored_negative)
    k_negative, k_positive = min(16, len(negative)), min(16, len(positive))
    d1, i1 = negative_tree.query(vertices[positive], k=k_negative, distance_upper_bound=tolerance)
    d2, i2 = positive_tree.query(mirrored_negative, k=k_positive, distance_upper_bound=tolerance)
    assert isinstance(d1, np.ndarray) and isinstance(d2, np.ndarray)  # a query of many points gives arrays
    rows = np.concatenate([np.repeat(np.arange(len(positive)), k_negative), i2.ravel()])
    cols = np.concatenate([i1.ravel(), np.repeat(np.arange(len(negative)), k_positive)])
    costs = np.concatenate([d1.ravel(), d2.ravel()]) ** 2
    found = np.isfinite(costs)
    rows, cols, costs = rows[found], cols[found], costs[found]
    unique_pairs, first = np.unique(np.stack([rows, cols], 1), axis=0, return_index=True)
    rows, cols, costs = unique_pairs[:, 0], unique_pairs[:, 1], costs[first]
    # Square assignment with "stay unpaired" options: rows = positives then one dummy per
    # negative, columns = negatives then one dummy per positive. Leaving a vertex unpaired costs
    # tolerance^2, so the minimum pairs as many vertices as possible with short pairs.
    num_pos, num_neg = len(positive), len(negative)
    penalty = tolerance**2
    tiny = 1e-12  # explicit zeros would vanish from the sparse graph
    all_rows = np.concatenate([rows, np.arange(num_pos), num_pos + np.arange(num_neg), num_pos + cols])
    all_cols = np.concatenate([cols, num_neg + np.arange(num_pos), np.arange(num_neg), num_neg + rows])
    all_costs = np.concatenate(
        [costs + tiny, np.full(num_pos, penalty), np.full(num_neg, penalty), np.full(len(rows), tiny)]
    )
    size = num_pos + num_neg
    graph = sp.csr_matrix((all_costs, (all_rows, all_cols)), shape=(size, size))
    row_index, col_index = min_weight_full_bipartite_matching(graph)
    real = (row_index < num_pos) & (col_index < num_neg)
    pairs = np.stack([positive[row_index[real]], negative[col_index[real]]], axis=1)
    mirror_of_second = vertices[pairs[:, 1]].copy()
    mirror_of_second[:, axis] *= -1
    pair_distance = np.linalg.norm(vertices[pairs[:, 0]] - mirror_of_second, axis=1)
    pairs = pairs[pair_distance <= tolerance]
    if 2 * len(pairs) < 0.9 * (len(positive) + len(negative)):
        return None
    flip[pairs[:, 0]] = pairs[:, 1]
    flip[pairs[:, 1]] = pairs[:, 0]
    return flip
