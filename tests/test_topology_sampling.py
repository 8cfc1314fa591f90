"""Mesh sampling: shapes, barycentric rows, exact kept vertices, validity, quality vs GraphCMR."""

from __future__ import annotations

import numpy as np
import pytest

from fastmetro.errors import FastMetroError
from fastmetro.io import load_npz_restricted
from fastmetro.topology.build import build_topology
from fastmetro.topology.graphcmr import _mesh_classes
from fastmetro.topology.sampling import (
    closest_point_barycentric,
    reconstruction_error,
    sample_mesh,
)


def _sphere(subdivisions: int = 3):
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


@pytest.fixture(scope="module")
def sphere_levels():
    vertices, faces = _sphere()
    return vertices, faces, sample_mesh(vertices, faces, (162, 42))


@pytest.fixture(scope="module")
def smpl_files(smpl_dir):
    arrays = load_npz_restricted(smpl_dir / "mesh_downsampling.npz", _mesh_classes(), keys=["M", "F", "D", "U"])
    template = np.asarray(arrays["M"][0].v, dtype=np.float64)
    return template, np.asarray(arrays["F"][0], dtype=np.int64), arrays


@pytest.fixture(scope="module")
def smpl_ours(smpl_files):
    template, faces, _ = smpl_files
    return sample_mesh(template, faces, (1723, 431))


def test_sampling_shapes(sphere_levels):
    vertices, faces, levels = sphere_levels
    assert levels.vertex_counts == (642, 162, 42)
    for level, (kept, up) in enumerate(zip(levels.kept_indices, levels.upsample)):
        finer, coarser = levels.vertex_counts[level], levels.vertex_counts[level + 1]
        assert kept.shape == (coarser,) and np.all(np.diff(kept) > 0) and kept.max() < finer
        assert up.shape == (finer, coarser)
        assert levels.faces[level + 1].max() < coarser
        assert np.diff(up.tocsr().indptr).max() <= 3  # one face per row


def test_upsampling_rows_are_barycentric_and_kept_vertices_exact(sphere_levels):
    vertices, _, levels = sphere_levels
    current = vertices
    for kept, up in zip(levels.kept_indices, levels.upsample):
        np.testing.assert_allclose(np.asarray(up.sum(axis=1)).ravel(), 1.0, atol=1e-12)
        coarse = current[kept]
        np.testing.assert_array_equal((up @ coarse)[kept], coarse)  # exact, not approximately
        rows = up.tocsr()[kept]
        assert rows.nnz == len(kept) and np.all(rows.data == 1.0)
        current = coarse


def test_levels_are_closed_manifold_meshes(sphere_levels):
    _, _, levels = sphere_levels
    for faces in levels.faces:
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        assert np.all(counts == 2)  # every edge shared by exactly two faces: closed, manifold
        assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces)


def test_sampling_is_deterministic():
    vertices, faces = _sphere(2)
    first = sample_mesh(vertices, faces, (60, 20))
    second = sample_mesh(vertices, faces, (60, 20))
    for a, b in zip(first.kept_indices, second.kept_indices):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first.upsample, second.upsample):
        assert (a != b).nnz == 0


def test_closest_point_barycentric_regions():
    a, b, c = np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    points = np.array([[0.2, 0.2, 1.0], [-1, -1, 0], [2, -0.5, 0], [0.5, -1, 0], [1, 1, 0]])
    weights = closest_point_barycentric(points, *(np.repeat(x[None], len(points), 0) for x in (a, b, c)))
    expected = np.array([[0.6, 0.2, 0.2], [1, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0, 0.5, 0.5]])
    np.testing.assert_allclose(weights, expected, atol=1e-12)


def test_bad_inputs_raise_clear_errors():
    vertices, faces = _sphere(1)
    with pytest.raises(FastMetroError, match="strictly decreasing"):
        sample_mesh(vertices, faces, (10, 20))
    with pytest.raises(FastMetroError, match="NaN"):
        sample_mesh(np.where(np.arange(len(vertices))[:, None] == 3, np.nan, vertices), faces, (10,))
    with pytest.raises(FastMetroError, match="outside"):
        sample_mesh(vertices, faces + 1000, (10,))


def test_build_topology_without_joints_uses_centroid_root():
    vertices, faces = _sphere(2)
    topology = build_topology(vertices + [0.5, 0, 0], faces, (40, 12), name="ball")
    assert topology.num_joints == 0 and topology.root_joints == ()
    np.testing.assert_allclose(topology.root_regressor @ topology.template, [0.5, 0, 0], atol=1e-9)
    assert topology.level_vertex_counts == (162, 40, 12)


def _graphcmr_error(template, arrays, levels):
    coarse = template
    for level in range(levels):
        coarse = arrays["D"][level] @ coarse
    for level in range(levels - 1, -1, -1):
        coarse = arrays["U"][level] @ coarse
    distance = np.linalg.norm(coarse - template, axis=1)
    return distance.mean(), distance.max()


@pytest.mark.parametrize("levels", [1, 2])
def test_smpl_template_quality_at_least_graphcmr(smpl_files, smpl_ours, levels):
    """Down-then-up sampling the SMPL template: ours (1723 / 431) vs GraphCMR's D and U."""
    template, _, arrays = smpl_files
    theirs_mean, theirs_max = _graphcmr_error(template, arrays, levels)
    ours_mean, ours_max = reconstruction_error(template, smpl_ours.kept_indices, smpl_ours.upsample, levels)
    assert smpl_ours.vertex_counts == (6890, 1723, 431)
    assert ours_mean <= theirs_mean, (ours_mean * 1000, theirs_mean * 1000)
    assert ours_max <= theirs_max, (ours_max * 1000, theirs_max * 1000)
