"""Topology value, built-ins (SMPL, MANO, Anny), persistence, safe loading and the CLI."""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from fastmetro import topology as topology_module
from fastmetro.errors import FastMetroError
from fastmetro.topology import Topology
from fastmetro.topology.graphcmr import BODY_JOINT_NAMES


@pytest.fixture(scope="session")
def anny_topology():
    # The user's default cache (shared by every test and run): built once, then a fast load.
    return topology_module.load("anny")


def _check_topology(topology: Topology):
    counts = topology.level_vertex_counts
    for level in range(topology.num_levels - 1):
        assert topology.kept_indices[level].shape == (counts[level + 1],)
        assert topology.upsample[level].shape == (counts[level], counts[level + 1])
    adjacency = topology.coarse_adjacency
    assert adjacency.shape == (counts[-1], counts[-1])
    assert (adjacency != adjacency.T).nnz == 0
    assert adjacency.diagonal().sum() == 0 and set(np.unique(adjacency.data)) == {1.0}
    flip = topology.joint_flip
    np.testing.assert_array_equal(flip[flip], np.arange(topology.num_joints))
    if topology.vertex_flip is not None:
        vertex_flip = topology.vertex_flip
        np.testing.assert_array_equal(vertex_flip[vertex_flip], np.arange(topology.num_vertices))


def test_smpl_builtin(smpl_topology):
    _check_topology(smpl_topology)
    assert smpl_topology.level_vertex_counts == (6890, 1723, 431)
    assert smpl_topology.joint_names == BODY_JOINT_NAMES
    # The mirror permutation really mirrors: most vertices land within 1 cm of their image.
    template = smpl_topology.template
    mirrored = template[smpl_topology.vertex_flip] * [-1, 1, 1]
    distance = np.linalg.norm(mirrored - template, axis=1)
    assert np.median(distance) < 0.005 and np.mean(distance < 0.02) > 0.97
    # Flipping the mesh and the joints commutes with regressing joints.
    joints = smpl_topology.joint_regressor @ template
    flipped_joints = smpl_topology.joint_regressor @ (template[smpl_topology.vertex_flip] * [-1, 1, 1])
    # (atol: the H36M regressor itself is up to 2 cm asymmetric; a wrong flip is off by ~30 cm)
    np.testing.assert_allclose(flipped_joints, (joints * [-1, 1, 1])[smpl_topology.joint_flip], atol=0.03)


def test_mano_builtin_approximate_joints(mano_topology):
    _check_topology(mano_topology)
    assert mano_topology.level_vertex_counts == (778, 195) and mano_topology.num_joints == 21
    assert mano_topology.metadata["joint_regressor"] == "approximate"
    regressor = mano_topology.joint_regressor
    np.testing.assert_allclose(regressor.sum(1), 1.0, atol=1e-9)
    joints = regressor @ mano_topology.template
    names = mano_topology.joint_names
    # Each finger's joints run from the knuckle to the tip, in order, with plausible spacing.
    for finger in ("Thumb", "Index", "Middle", "Ring", "Pinky"):
        chain = np.stack([joints[names.index(f"{finger}_{k}")] for k in range(1, 5)])
        wrist_distance = np.linalg.norm(chain - joints[0], axis=1)
        assert np.all(np.diff(wrist_distance) > 0), finger
        bones = np.linalg.norm(np.diff(chain, axis=0), axis=1)
        assert np.all((bones > 0.008) & (bones < 0.06)), (finger, bones)


class _FakeCh:  # pickled under the name chumpy.ch.Ch, like MANO_RIGHT.pkl's arrays
    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        return (_FakeCh, (), {"x": self.x})


def test_mano_pickle_with_chumpy_objects(tmp_path, mano_dir, monkeypatch):
    module = types.ModuleType("chumpy.ch")
    _FakeCh.__module__, _FakeCh.__qualname__ = "chumpy.ch", "Ch"
    module.Ch = _FakeCh
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)
    rng = np.random.default_rng(0)
    regressor = sp.csc_matrix(rng.random((16, 778)) * (rng.random((16, 778)) < 0.01))
    data = {"J_regressor": regressor, "shapedirs": _FakeCh(np.zeros((778, 3, 10))), "f": np.zeros((1538, 3))}
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    monkeypatch.delitem(sys.modules, "chumpy.ch")  # reading must not need chumpy
    from fastmetro.topology.mano import read_mano_joint_regressor

    np.testing.assert_array_equal(read_mano_joint_regressor(path), regressor.toarray())
    topology = topology_module.load("mano", mano_dir, mano_model=path)
    assert topology.metadata["joint_regressor"] == "mano"
    np.testing.assert_allclose(topology.joint_regressor[1], regressor.toarray()[13])  # Thumb_1 = MANO 13


def test_mano_pickle_refuses_code(tmp_path):
    from fastmetro.topology.mano import read_mano_joint_regressor

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"J_regressor": _Evil()}))
    with pytest.raises(FastMetroError, match="refusing to load 'posix.system'|refusing to load 'os.system'"):
        read_mano_joint_regressor(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_anny_builtin(anny_topology):
    _check_topology(anny_topology)
    counts = anny_topology.level_vertex_counts
    assert len(counts) == 3 and abs(counts[1] - 1723) <= 20 and abs(counts[2] - 431) <= 10
    assert anny_topology.joint_names == BODY_JOINT_NAMES
    assert anny_topology.vertex_flip is not None
    assert anny_topology.source_vertex_indices.shape == (counts[0],)
    np.testing.assert_allclose(anny_topology.joint_regressor.sum(1), 1.0, atol=1e-9)
    assert anny_topology.joint_regressor.min() >= 0
    # Anny is mirror-symmetric: the flip maps vertices onto their mirror images, and mirroring
    # the mesh then regressing equals regressing then swapping left/right joints.
    template, flip = anny_topology.template, anny_topology.vertex_flip
    assert np.linalg.norm(template[flip] * [-1, 1, 1] - template, axis=1).max() < 0.002
    joints = anny_topology.joint_regressor @ template
    mirrored_joints = anny_topology.joint_regressor @ (template[flip] * [-1, 1, 1])
    np.testing.assert_allclose(mirrored_joints, (joints * [-1, 1, 1])[anny_topology.joint_flip], atol=0.005)


def test_anny_regressor_error_on_new_poses(anny_topology):
    """Joints regressed from Anny meshes vs Anny's skeleton on poses never used in the fit."""
    import anny

    from fastmetro.topology.anny import joint_errors, sample_anny

    model = anny.Anny()
    vertices, joints = sample_anny(model, 32, seed=12345, body=anny_topology.source_vertex_indices)
    errors = joint_errors(anny_topology.joint_regressor, vertices, joints) * 1000
    assert errors.mean() < 15.0, errors.mean(0)
    assert anny_topology.metadata["regressor_test_mean_error_mm"] < 15.0


def test_anny_loads_from_its_cache_without_rebuilding(anny_topology, monkeypatch):
    from fastmetro.topology import anny
    from fastmetro.topology.anny import cache_path

    assert cache_path().is_file()

    def no_build(*args, **kwargs):
        raise AssertionError("the cached Anny topology was rebuilt")

    monkeypatch.setattr(anny, "build_anny_topology", no_build)
    loaded = topology_module.load("anny")
    assert loaded.level_vertex_counts == anny_topology.level_vertex_counts and loaded.kind == "body"


def test_save_load_round_trip(tmp_path, smpl_topology):
    path = smpl_topology.save(tmp_path / "smpl.npz")
    with np.load(path, allow_pickle=False) as archive:  # no pickled members at all
        keys = set(archive.files)
    assert {"format", "level_vertex_counts", "faces_0", "kept_0", "joint_regressor"} <= keys
    loaded = topology_module.load(path)
    assert loaded.level_vertex_counts == smpl_topology.level_vertex_counts
    assert loaded.joint_names == smpl_topology.joint_names
    for a, b in zip(loaded.upsample, smpl_topology.upsample):
        assert (a != b).nnz == 0
    for a, b in zip(loaded.faces + loaded.kept_indices, smpl_topology.faces + smpl_topology.kept_indices):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.vertex_flip, smpl_topology.vertex_flip)
    np.testing.assert_array_equal(loaded.joint_regressor, smpl_topology.joint_regressor)
    assert (loaded.coarse_adjacency != smpl_topology.coarse_adjacency).nnz == 0


def test_round_trip_keeps_metadata_and_source_indices(tmp_path, anny_topology):
    loaded = Topology.load(anny_topology.save(tmp_path / "anny.npz"))
    np.testing.assert_array_equal(loaded.source_vertex_indices, anny_topology.source_vertex_indices)
    assert loaded.metadata == anny_topology.metadata


def test_missing_and_malformed_files(tmp_path, smpl_topology):
    with pytest.raises(FastMetroError, match="not found"):
        Topology.load(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(FastMetroError, match="garbage.npz"):
        Topology.load(garbage)
    arrays = smpl_topology.to_arrays()
    del arrays["kept_1"]
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, **arrays)
    with pytest.raises(FastMetroError, match="missing 'kept_1'"):
        Topology.load(incomplete)
    arrays = smpl_topology.to_arrays()
    arrays["joint_regressor"] = arrays["joint_regressor"][:, :10]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **arrays)
    with pytest.raises(FastMetroError, match="joint regressor has shape"):
        Topology.load(wrong)
    with pytest.raises(FastMetroError, match="unknown topology"):
        topology_module.load("smpl-x")


def test_pickled_member_is_refused(tmp_path, smpl_topology):
    """An npz member holding a pickle that names os.system: numpy refuses it, and so does the
    restricted unpickler used for the legacy GraphCMR files."""
    from fastmetro.io import load_npz_restricted

    evil = pickle.dumps(_Evil())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    path = tmp_path / "evil.npz"
    arrays = smpl_topology.to_arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(value))
            archive.writestr(f"{key}.npy", buffer.getvalue())
        archive.writestr("A.npy", header.getvalue() + evil)
    with pytest.raises(FastMetroError, match="evil.npz: member .A.: holds pickled Python objects"):
        Topology.load(path)  # numpy refuses the object member; nothing is unpickled
    with pytest.raises(FastMetroError, match="refusing to load '(posix|os).system'"):
        load_npz_restricted(path, keys=["A"])
    # The same pickle in place of a member the topology needs:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("format.npy", header.getvalue() + evil)
    with pytest.raises(FastMetroError, match="evil.npz"):
        Topology.load(path)


def test_cli_build_and_info(tmp_path, capsys):
    import trimesh

    from fastmetro.cli import main

    mesh = trimesh.creation.icosphere(subdivisions=3)
    mesh_path = tmp_path / "ball.obj"
    mesh.export(mesh_path)
    regressor = np.zeros((2, len(mesh.vertices)))
    regressor[0, :3] = 1 / 3
    regressor[1, 5] = 1.0
    np.save(tmp_path / "R.npy", regressor)
    out = tmp_path / "ball.npz"
    assert main(["topology", "build", "--mesh", str(mesh_path), "--sizes", "160", "40",
                 "--joint-regressor", str(tmp_path / "R.npy"), "--out", str(out)]) == 0  # fmt: skip
    topology = Topology.load(out)
    assert topology.level_vertex_counts == (642, 160, 40) and topology.num_joints == 2
    capsys.readouterr()
    assert main(["topology", "info", str(out), "--mesh", str(mesh_path)]) == 0
    printed = capsys.readouterr().out
    assert "642 -> 160 -> 40" in printed and "mean mm" in printed
    assert main(["topology", "build", "--mesh", str(tmp_path / "nope.obj"), "--out", str(out)]) == 2
    assert "nope.obj" in capsys.readouterr().err


def test_malformed_array_contents(tmp_path, smpl_topology):
    arrays = smpl_topology.to_arrays()
    arrays["upsample_0_row"] = arrays["upsample_0_row"][:10]  # inconsistent COO parts
    path = tmp_path / "bad_coo.npz"
    np.savez(path, **arrays)
    with pytest.raises(FastMetroError, match="bad_coo.npz"):
        Topology.load(path)
    arrays = smpl_topology.to_arrays()
    arrays["vertex_flip"] = np.zeros_like(arrays["vertex_flip"])
    path = tmp_path / "bad_flip.npz"
    np.savez(path, **arrays)
    with pytest.raises(FastMetroError, match="bad_flip.npz.*vertex_flip is not a permutation"):
        Topology.load(path)
