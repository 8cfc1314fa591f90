"""Fuzz: binary array and weight files - .npz archives (topology, restricted legacy loads, annotation
NPZ), pickles (restricted unpickler), and weight files (``read_state_dict``).

A damaged file is one clean line naming it; a pickle payload never runs and a refusal names the
refused global; nothing allocates what a header claims before checking the file can hold it; no
message suggests turning the pickle protections off.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_helpers import tiny_topology
from fastmetro.data.convert import read_annotations
from fastmetro.io import load_npz_restricted, restricted_loads
from fastmetro.model_files import read_state_dict
from fastmetro.topology import Topology
from fuzz_helpers import (
    expect_clean,
    expect_error,
    expect_ok,
    flip_bytes,
    npy_bytes,
    npy_with_header,
    npz_bytes,
    object_npy_payload,
    pickle_payload,
    zip_members,
)

GOOD = tiny_topology().to_arrays()


def topology_file(tmp_path, **changes) -> bytes:
    arrays = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return npz_bytes(arrays)


def load_topology(path):
    topology = Topology.load(path)
    # accepted: what the model and data code rely on must hold
    for level, faces in enumerate(topology.faces):
        assert faces.dtype == np.int64 and faces.ndim == 2 and faces.shape[1] == 3
        assert faces.size == 0 or (faces.min() >= 0 and faces.max() < topology.level_vertex_counts[level])
    assert all(n > 0 for n in topology.level_vertex_counts), f"[silent] counts {topology.level_vertex_counts}"
    assert all(j >= 0 for j in topology.root_joints), f"[silent] root joints {topology.root_joints}"
    if topology.template is not None:
        assert np.isfinite(topology.template).all(), "[silent] non-finite template accepted"
    return topology


# ---------------------------------------------------------------------------- topology .npz
def test_good_topology_file_loads(tmp_path):
    path = tmp_path / "t.npz"
    path.write_bytes(topology_file(tmp_path))
    assert expect_ok(load_topology, path).level_vertex_counts == (8, 4)


@pytest.mark.parametrize(
    "data, what",
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(400), "random bytes"),
        (b"PK\x03\x04" + np.random.default_rng(1).bytes(100), "broken zip"),
        (b"\x80\x04\x95" + b"\x00" * 20, "a pickle"),
        (npy_bytes(np.zeros(3)), "an .npy, not an .npz"),
    ],
)
def test_unreadable_topology_file(tmp_path, data, what):
    path = tmp_path / "t.npz"
    path.write_bytes(data)
    expect_error(Topology.load, path, names=("t.npz",))


def test_pickled_member_is_refused_and_never_runs(tmp_path):
    raw = topology_file(tmp_path)
    members = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for name in archive.namelist():
            members[name] = archive.read(name)
    members["joint_names.npy"] = object_npy_payload(tmp_path / "PWNED")
    path = tmp_path / "t.npz"
    path.write_bytes(zip_members(members))
    expect_error(Topology.load, path, names=("t.npz", "joint_names"))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "changes, what",
    [
        ({"level_vertex_counts": np.array([8.0, np.inf])}, "inf count"),
        ({"level_vertex_counts": np.array([8.5, 4.0])}, "fractional count"),
        ({"level_vertex_counts": np.array([8, -4])}, "negative count"),
        ({"level_vertex_counts": np.array([8, 10**15])}, "huge count"),
        ({"level_vertex_counts": np.array([], np.int64)}, "no levels"),
        ({"level_vertex_counts": np.array(8)}, "0-d counts"),
        ({"level_vertex_counts": np.array(["8", "4"])}, "string counts"),
        ({"coarse_adjacency_shape": np.array([10**15, 10**15])}, "adjacency shape 1e15"),
        ({"coarse_adjacency_shape": np.array([4.0, np.nan])}, "adjacency shape nan"),
        ({"coarse_adjacency_shape": np.array([4, 4, 4])}, "3-D adjacency"),
        ({"coarse_adjacency_row": np.array([0, 1, 10**12])}, "adjacency index beyond"),
        ({"upsample_0_shape": np.array([10**15, 4])}, "upsample shape 1e15"),
        ({"upsample_0_shape": np.array([-8, 4])}, "negative upsample shape"),
        ({"upsample_0_row": np.array([0.5] * len(GOOD["upsample_0_row"]))}, "fractional indices"),
        ({"upsample_0_data": np.full(len(GOOD["upsample_0_data"]), np.nan)}, "nan upsample"),
        ({"upsample_0_data": GOOD["upsample_0_data"][:2]}, "ragged coo"),
        ({"faces_0": GOOD["faces_0"].astype(np.float64) + 0.5}, "fractional faces"),
        ({"faces_0": np.full((12, 3), np.nan)}, "nan faces"),
        ({"faces_0": GOOD["faces_0"].reshape(-1, 4)}, "faces of 4 columns"),
        ({"faces_0": GOOD["faces_0"] + 100}, "faces out of range"),
        ({"kept_0": np.array([0.0, 2.0, 4.0, 6.5])}, "fractional kept"),
        ({"kept_0": np.array([0, 2, 4, 10**12])}, "kept out of range"),
        ({"joint_flip": GOOD["joint_flip"] + 0.5}, "fractional flip"),
        ({"vertex_flip": np.array([10**15] * 8)}, "vertex flip 1e15"),
        ({"vertex_flip": np.array([-1] * 8)}, "negative vertex flip"),
        ({"root_joints": np.array([-1])}, "negative root joint"),
        ({"root_joints": np.array([1.5])}, "fractional root joint"),
        ({"template": np.full((8, 3), np.nan)}, "nan template"),
        ({"template": np.zeros((8, 2))}, "template shape"),
        ({"joint_regressor": np.full((14, 8), np.inf)}, "inf regressor"),
        ({"joint_regressor": np.array([["a"] * 8] * 14)}, "string regressor"),
        ({"root_regressor": np.zeros((8, 8))}, "2-D root regressor"),
        ({"version": np.array("one")}, "string version"),
        ({"version": np.array(np.nan)}, "nan version"),
        ({"version": np.array(10**6)}, "future version"),
        ({"format": np.array(7)}, "not the format"),
        ({"metadata_json": np.array("{not json")}, "bad metadata"),
        ({"metadata_json": np.array("[" * 100000 + "]" * 100000)}, "deep metadata"),
        ({"name": np.array(["a", "b"])}, "name of two strings"),
        ({"kept_0": None}, "missing kept"),
        ({"source_vertex_indices": np.array([-1] * 8)}, "negative source indices"),
    ],
)
def test_damaged_topology_arrays(tmp_path, changes, what):
    path = tmp_path / "t.npz"
    path.write_bytes(topology_file(tmp_path, **changes))
    expect_error(load_topology, path, names=("t.npz",), seconds=20)


@pytest.mark.parametrize("compressed", [True, False])
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
def test_flipped_bytes_in_a_topology_file(tmp_path_factory, compressed, positions):
    directory = tmp_path_factory.mktemp("topo")
    path = directory / "t.npz"
    path.write_bytes(flip_bytes(npz_bytes(GOOD, compressed=compressed), positions))
    expect_clean(load_topology, path, names=("t.npz",), seconds=20)


def test_corrupt_compressed_member_is_one_line(tmp_path):
    raw = bytearray(npz_bytes(GOOD))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = archive.getinfo("joint_regressor.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for offset in range(start + 5, start + 25):
        raw[offset] ^= 0xA5
    path = tmp_path / "t.npz"
    path.write_bytes(bytes(raw))
    expect_error(Topology.load, path, names=("t.npz",))


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.int64, np.int32, np.float64, np.float32, np.bool_, np.uint8, np.dtype("<U3")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=16),
)


@given(st.sampled_from(sorted(GOOD)), ARRAYS)
def test_any_array_in_place_of_a_topology_member(tmp_path_factory, key, array):
    path = tmp_path_factory.mktemp("topo") / "t.npz"
    path.write_bytes(topology_file(None, **{key: array}))
    expect_clean(load_topology, path, names=("t.npz",), seconds=20)


# ---------------------------------------------------------------------------- restricted .npz loads
@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(2).bytes(300),
        b"",
        b"\x80\x04\x95\x00",
        zip_members({"A.npy": b"not an array"}),
        zip_members({"A.npy": npy_with_header({"descr": "<f8", "fortran_order": False, "shape": (10**12,)})}),
        zip_members(
            {"A.npy": npy_with_header({"descr": "<f8", "fortran_order": False, "shape": (10, 10)}, b"\x00" * 7)}
        ),
        zip_members({"A.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'}  \n"}),
    ],
    ids=["random", "empty", "pickle", "not-npy", "huge-header", "short-data", "bad-header"],
)
def test_restricted_npz_refuses_damaged_files(tmp_path, data):
    path = tmp_path / "model.npz"
    path.write_bytes(data)
    expect_error(load_npz_restricted, path, names=("model.npz",))


def test_restricted_npz_refuses_pickled_payload_naming_the_global(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(zip_members({"A.npy": object_npy_payload(tmp_path / "PWNED")}))
    error = expect_error(load_npz_restricted, path, names=("model.npz",))
    assert "mkdir" in str(error), f"[message] the refused global is not named: {error}"
    assert not (tmp_path / "PWNED").exists()


def test_restricted_npz_reads_allowed_objects(tmp_path):
    import scipy.sparse as sp

    matrix = sp.csr_matrix(np.eye(3))
    array = np.empty((1,), dtype=object)
    array[0] = matrix
    path = tmp_path / "model.npz"
    path.write_bytes(zip_members({"U.npy": npy_bytes(array), "F.npy": npy_bytes(np.arange(6).reshape(2, 3))}))
    loaded = expect_ok(load_npz_restricted, path)
    assert (loaded["U"][0] != matrix).nnz == 0 and loaded["F"].tolist() == [[0, 1, 2], [3, 4, 5]]


@given(st.lists(st.integers(0, 10**5), min_size=1, max_size=4))
def test_flipped_bytes_in_a_restricted_npz(tmp_path_factory, positions):
    import scipy.sparse as sp

    array = np.empty((1,), dtype=object)
    array[0] = sp.csr_matrix(np.eye(4))
    good = npz_bytes({"U": array, "F": np.arange(12).reshape(4, 3)})
    path = tmp_path_factory.mktemp("npz") / "model.npz"
    path.write_bytes(flip_bytes(good, positions))
    expect_clean(load_npz_restricted, path, names=("model.npz",))


# ---------------------------------------------------------------------------- plain pickles
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_unpickler_never_runs_a_payload(tmp_path, protocol):
    error = expect_error(
        restricted_loads, pickle_payload(tmp_path / "PWNED", protocol), source="x.pkl", names=("x.pkl",)
    )
    assert "mkdir" in str(error), f"[message] the refused global is not named: {error}"
    assert not (tmp_path / "PWNED").exists()


@given(st.binary(max_size=200))
def test_restricted_unpickler_on_random_bytes_is_clean(data):
    expect_clean(restricted_loads, data, source="x.pkl", names=("x.pkl",))


# ---------------------------------------------------------------------------- annotation .npz (data convert)
@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(3).bytes(300),
        b"",
        zip_members({"file.npy": object_npy_payload(__import__("pathlib").Path("/nonexistent/PWNED"))}),
        npz_bytes({"image": np.array(["a.png"]), "center": np.zeros((2, 2))}),
        npz_bytes({"image": np.array("a.png")}),
    ],
    ids=["random", "empty", "pickled", "rows-differ", "0-d"],
)
def test_annotation_npz_refuses_damaged_files(tmp_path, data):
    path = tmp_path / "ann.npz"
    path.write_bytes(data)
    expect_error(read_annotations, path, names=("ann.npz",))


def test_annotation_npz_with_corrupt_member(tmp_path):
    raw = bytearray(npz_bytes({"image": np.array(["a.png"] * 50), "center": np.random.default_rng(0).random((50, 2))}))
    for offset in range(60, 90):
        raw[offset] ^= 0x3C
    path = tmp_path / "ann.npz"
    path.write_bytes(bytes(raw))
    expect_error(read_annotations, path, names=("ann.npz",))


# ---------------------------------------------------------------------------- weight files
def torch_file(value) -> bytes:
    stream = io.BytesIO()
    torch.save(value, stream)
    return stream.getvalue()


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_refused_pickle_in_weights_names_the_global_and_gives_no_unsafe_advice(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(torch_file({"w": _Payload(tmp_path / "PWNED")}))
    error = expect_error(read_state_dict, path, names=(path.name,))
    assert "mkdir" in str(error), f"[message] refused global not named: {error}"
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world\n",
        np.random.default_rng(4).bytes(500),
        pickle.dumps([1, 2, 3]),
        torch_file({"w": torch.zeros(3)})[:200],
        torch_file([torch.zeros(2)]),
        torch_file({"w": 3}),
    ],
    ids=["empty", "text", "random", "list-pickle", "truncated", "list", "not-tensor"],
)
def test_damaged_torch_weights(tmp_path, data):
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    expect_error(read_state_dict, path, names=("w.pth",))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff" * 8 + b"{}",
        np.random.default_rng(5).bytes(64),
        (10**12).to_bytes(8, "little") + b"{}",
        (30).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [1000000000], "data_offsets": [0, 4000000000]}}',
    ],
    ids=["empty", "huge-length", "random", "header-beyond-file", "data-beyond-file"],
)
def test_damaged_safetensors(tmp_path, data):
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    expect_error(read_state_dict, path, names=("w.safetensors",))


@given(st.lists(st.integers(0, 10**5), min_size=1, max_size=4))
def test_flipped_bytes_in_torch_weights(tmp_path_factory, positions):
    path = tmp_path_factory.mktemp("w") / "w.pth"
    path.write_bytes(flip_bytes(torch_file({"a": torch.arange(40.0), "b": torch.ones(2, 3)}), positions))
    expect_clean(read_state_dict, path, names=("w.pth",))


def test_atomic_writes_never_replace_a_folder_or_device(tmp_path):
    """An output path that exists but is not a regular file (a folder, /dev/null) is refused and left
    as it is: renaming a temporary file over a device as root would destroy the device node."""
    from fastmetro.errors import FastMetroError
    from fastmetro.io import atomic_save, atomic_write

    folder = tmp_path / "out"
    folder.mkdir()
    for target in (folder, Path("/dev/null")):
        with pytest.raises(FastMetroError, match="not a regular file"):
            with atomic_write(target) as handle:
                handle.write(b"x")
        with pytest.raises(FastMetroError, match="not a regular file"):
            atomic_save(target, lambda name: Path(name).write_bytes(b"x"))
    assert folder.is_dir() and Path("/dev/null").is_char_device()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
