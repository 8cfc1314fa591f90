"""Build a :class:`Topology` for any triangle mesh (vertices, faces) with optional joints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.topology.sampling import check_mesh, reconstruction_error, sample_mesh
from fastmetro.topology.topology import Topology, adjacency_from_faces, mirror_permutation


def build_topology(
    vertices: np.ndarray,
    faces: np.ndarray,
    sizes: tuple[int, ...] = (1723, 431),
    joint_regressor: np.ndarray | None = None,
    joint_names: tuple[str, ...] | None = None,
    joint_flip: tuple[int, ...] | None = None,
    root_joints: tuple[int, ...] | None = None,
    root_regressor: np.ndarray | None = None,
    name: str = "mesh",
    mirror_axis: int | None = 0,
    kind: str = "body",
) -> Topology:
    """Sample ``vertices``/``faces`` into levels and wrap them with joints into a Topology.

    Args:
        vertices: (V, 3) template (metres for body models). Vertices in no face are an error.
        faces: (F, 3) triangles.
        sizes: vertex counts of the coarser levels, strictly decreasing, e.g. (1723, 431).
        joint_regressor: (K, V) joints = R @ vertices, or None for a mesh without joints (K = 0).
        joint_names: K names (default ``joint_0`` ...); joint_flip: left/right permutation
            (default identity); root_joints: joints averaged for the root (default all).
        root_regressor: (V,) weights of the point meshes are centred on (default: the mean of
            the root joints' rows, or the vertex centroid when there are no joints).
        mirror_axis: axis of left/right symmetry for ``vertex_flip`` (None: no vertex flip;
            an asymmetric mesh gets None anyway).
        kind: ``"body"`` or ``"hand"`` (released recipe: augmentation, losses, hand metrics).
    """
    vertices, faces = check_mesh(vertices, faces)
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    if not used.all():
        raise FastMetroError(f"{name}: {int((~used).sum())} vertices belong to no face; remove them first")
    num_vertices = len(vertices)
    if joint_regressor is None:
        regressor = np.zeros((0, num_vertices))
    else:
        regressor = np.asarray(joint_regressor, dtype=np.float64)
        if regressor.ndim != 2 or regressor.shape[1] != num_vertices:
            raise FastMetroError(f"{name}: joint regressor must have shape (K, {num_vertices}), got {regressor.shape}")
    num_joints = len(regressor)
    names = tuple(joint_names) if joint_names is not None else tuple(f"joint_{k}" for k in range(num_joints))
    flip = tuple(joint_flip) if joint_flip is not None else tuple(range(num_joints))
    roots = tuple(root_joints) if root_joints is not None else tuple(range(num_joints))
    if root_regressor is None:
        root_regressor = regressor[list(roots)].mean(0) if roots else np.full(num_vertices, 1.0 / num_vertices)
    levels = sample_mesh(vertices, faces, sizes)
    metadata: dict[str, list[int] | list[float]] = {"sizes": list(levels.vertex_counts)}
    for level in range(1, len(sizes) + 1):
        mean, worst = reconstruction_error(vertices, levels.kept_indices, levels.upsample, level)
        metadata[f"reconstruction_level{level}_mm"] = [mean * 1000, worst * 1000]
    return Topology(
        kind=kind,
        name=name,
        level_vertex_counts=levels.vertex_counts,
        faces=levels.faces,
        kept_indices=levels.kept_indices,
        upsample=levels.upsample,
        coarse_adjacency=adjacency_from_faces(levels.faces[-1], levels.vertex_counts[-1]),
        joint_regressor=regressor,
        joint_names=names,
        joint_flip=np.asarray(flip),
        root_joints=roots,
        root_regressor=root_regressor,
        vertex_flip=None if mirror_axis is None else mirror_permutation(vertices, axis=mirror_axis),
        template=vertices,
        metadata=metadata,
    )


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, faces (F, 3) int64) of an .obj/.ply/.off/.stl file via trimesh.

    Vertices are kept in file order (no merging), so indices match the file.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: mesh file not found")
    try:
        mesh = trimesh.load(path, force="mesh", process=False, maintain_order=True)
    except Exception as error:  # noqa: BLE001 (trimesh raises many types for bad files)
        raise FastMetroError(f"{path}: cannot read mesh ({error})") from None
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0:
        raise FastMetroError(f"{path}: no triangle faces found")
    # trimesh.load(force="mesh") gives a Trimesh; its annotation says Geometry.
    return check_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), str(path))  # type: ignore[attr-defined]
