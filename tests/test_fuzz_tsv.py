"""Fuzz: the files of a METRO shard other than label fields (TSV rows, .lineidx, linelist, yaml,
composite lists, the vertices .npy side file, image columns).

A damaged file must give a one-line FastMetroError naming it, or (row-level damage) a bad row that
`data check` lists and `MeshDataset` stops on with one line. Nothing may be silently misread.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from data_helpers import replace_row, tiny_topology, write_shard
from fastmetro.data.check import check_dataset
from fastmetro.data.dataset import MeshDataset
from fastmetro.data.tsv import TSVDataset, TSVFile, lineidx_path, read_linelist, read_yaml
from fastmetro.errors import FastMetroError
from fuzz_helpers import (
    base64_text,
    expect_clean,
    expect_error,
    expect_ok,
    flip_bytes,
    jpeg_bytes,
    npy_bytes,
    npy_with_header,
    npz_bytes,
    object_npy_payload,
    png_bomb,
    png_bytes,
)

TOPOLOGY = tiny_topology()


@pytest.fixture
def shard(tmp_path):
    """A fresh 3-row shard with vertices; returns its yaml path."""
    return write_shard(tmp_path, "s", 3, with_vertices=True)


def read_everything(yaml_path) -> list:
    """What `data check` and training do: open the dataset and decode every row."""
    dataset = TSVDataset(yaml_path)
    return [dataset[i] for i in range(len(dataset))]


def check_rows(yaml_path):
    return check_dataset(yaml_path, num_joints=14, num_vertices=8)


def assert_dataset_error(yaml_path, names=()):
    """Opening or reading the dataset is one clean error naming ``names`` (both check and training)."""
    expect_error(read_everything, yaml_path, names=names)
    expect_error(check_rows, yaml_path, names=names)


def assert_rows_bad(yaml_path, keys, names=()):
    """Either the dataset is refused as a whole, or exactly ``keys`` are bad rows."""
    status, result = expect_clean(check_rows, yaml_path, names=names)
    if status == "ok":
        if set(result.bad_rows) != set(keys):
            pytest.fail(f"[silent] bad rows {sorted(result.bad_rows)}, expected {sorted(keys)}")
        dataset = MeshDataset(yaml_path, TOPOLOGY)
        for index in range(len(dataset)):
            if dataset.rows.key(index) in keys:
                expect_error(dataset.load, index, names=names)
            else:
                expect_ok(dataset.load, index)


# ---------------------------------------------------------------------------- .lineidx
@pytest.mark.parametrize("which", ["img", "label"])
@pytest.mark.parametrize(
    "text",
    [
        "0\n99999999999999999999\n",  # beyond int64
        "0\n-5\n",  # negative
        "0\n1.5\n",  # not an integer
        "0\n0x10\n",
        "0\n10\n20\n30\n40\n",  # more rows than the tsv
        "",  # empty while the tsv has rows
        "0\n",  # stops before the end
        "0\n0\n0\n",  # duplicated offsets
    ],
)
def test_damaged_lineidx_is_an_error(shard, which, text):
    index = lineidx_path(shard.parent / f"s.{which}.tsv")
    index.write_text(text)
    assert_dataset_error(shard, names=(f"s.{which}.",))


def test_lineidx_of_binary_bytes_is_an_error(shard):
    index = lineidx_path(shard.parent / "s.label.tsv")
    index.write_bytes(b"\xff\xfe\x00\x01garbage\x80\n")
    assert_dataset_error(shard, names=("s.label.lineidx",))


def test_lineidx_offsets_inside_rows_are_not_misread(shard):
    """Offsets that are increasing and in range but not at row starts (an index of another file)."""
    tsv = shard.parent / "s.label.tsv"
    offsets = [int(v) for v in lineidx_path(tsv).read_text().split()]
    lineidx_path(tsv).write_text("".join(f"{o + 7}\n" for o in offsets))
    status, result = expect_clean(check_rows, shard, names=("s.label",))
    if status == "ok" and result.ok:
        pytest.fail("[silent] a shifted .lineidx was read as good rows")


def test_lineidx_of_the_same_rows_reordered_is_refused(shard):
    tsv = shard.parent / "s.label.tsv"
    offsets = lineidx_path(tsv).read_text().split()
    for path in (tsv, shard.parent / "s.img.tsv", shard.parent / "s.hw.tsv"):
        values = lineidx_path(path).read_text().split()
        lineidx_path(path).write_text("\n".join([values[1], values[0], values[2]]) + "\n")
    assert offsets
    assert_dataset_error(shard, names=("lineidx",))


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=5),
    st.sampled_from(["img", "label", "hw"]),
)
def test_flipped_bytes_in_a_lineidx_are_clean(tmp_path_factory, flips, which):
    directory = tmp_path_factory.mktemp("lineidx")
    yaml_path = write_shard(directory, "s", 3, with_vertices=True)
    index = lineidx_path(directory / f"s.{which}.tsv")
    original = index.read_bytes()
    damaged = bytearray(original)
    for position, xor in flips:
        damaged[position % len(damaged)] ^= xor
    index.write_bytes(bytes(damaged))
    status, result = expect_clean(check_rows, yaml_path)
    if status == "ok" and bytes(damaged).split() != original.split():
        # accepted despite a changed index: every row read must still be a true row of the shard
        for key in result.bad_rows:
            assert key in ("s_0", "s_1", "s_2"), f"[silent] misread key {key!r}"
        dataset = TSVDataset(yaml_path)
        keys = [dataset.key(i) for i in range(len(dataset))]
        if keys != ["s_0", "s_1", "s_2"]:
            pytest.fail(f"[silent] damaged .lineidx accepted with rows {keys}")


# ---------------------------------------------------------------------------- TSV rows
@given(
    st.lists(st.tuples(st.integers(0, 10**7), st.integers(1, 255)), min_size=1, max_size=8),
    st.sampled_from(["img", "label", "hw"]),
)
def test_flipped_bytes_in_a_tsv_are_clean(tmp_path_factory, flips, which):
    directory = tmp_path_factory.mktemp("tsvflip")
    yaml_path = write_shard(directory, "s", 3, with_vertices=True)
    tsv = directory / f"s.{which}.tsv"
    tsv.write_bytes(flip_bytes(tsv.read_bytes(), [p for p, _ in flips], xor=flips[0][1]))
    lineidx_path(tsv).unlink()
    status, result = expect_clean(check_rows, yaml_path)
    if status == "ok":
        dataset = MeshDataset(yaml_path, TOPOLOGY)
        for index in range(len(dataset)):
            expect_clean(dataset.load, index)


@given(st.integers(0, 10**7))
def test_truncated_tsv_is_clean(tmp_path_factory, cut):
    directory = tmp_path_factory.mktemp("tsvcut")
    yaml_path = write_shard(directory, "s", 3, with_vertices=True)
    tsv = directory / "s.img.tsv"
    data = tsv.read_bytes()
    tsv.write_bytes(data[: cut % len(data)])
    status, result = expect_clean(check_rows, yaml_path)
    if status == "ok" and result.ok:
        pytest.fail("[silent] a truncated image tsv was read as good")


def test_row_with_invalid_utf8_key_is_a_bad_row(shard):
    tsv = shard.parent / "s.label.tsv"
    line = tsv.read_bytes().splitlines(keepends=True)[1]
    replace_row(tsv, 1, b"s_\xff1" + line[3:])
    assert_rows_bad(shard, {"s_\ufffd1"})


def test_row_without_a_label_column_is_a_bad_row(shard):
    replace_row(shard.parent / "s.label.tsv", 2, "s_2\n")
    assert_rows_bad(shard, {"s_2"}, names=("s.label.tsv",))


def test_rows_of_image_and_label_files_disagree(shard):
    replace_row(shard.parent / "s.img.tsv", 0, "other\t" + base64_text(png_bytes()) + "\n")
    assert_rows_bad(shard, {"s_0"}, names=("s.img.tsv",))


def test_label_tsv_shorter_than_image_tsv_is_an_error(shard):
    tsv = shard.parent / "s.label.tsv"
    tsv.write_bytes(b"".join(tsv.read_bytes().splitlines(keepends=True)[:2]))
    lineidx_path(tsv).unlink()
    assert_dataset_error(shard, names=("s.label.tsv",))


# ---------------------------------------------------------------------------- image column
@pytest.mark.parametrize(
    "payload, what",
    [
        ("not base64 at all!", "base64"),
        (base64_text(b"\x00" * 100), "image"),
        (base64_text(b"GIF89a" + b"\x00" * 30), "image"),
        ("", "image"),
        (base64_text(jpeg_bytes()[:-300]), "truncated JPEG"),
        (base64_text(jpeg_bytes()[: len(jpeg_bytes()) // 2]), "half a JPEG"),
        (base64_text(png_bytes()[:-40]), "truncated PNG"),
        (base64_text(png_bomb(20000, 20000)), "decompression bomb"),
        (b"iVBOR\xff\xfe\x80", "invalid UTF-8"),
    ],
)
def test_bad_image_column_is_a_bad_row(shard, payload, what):
    line = (b"s_1\t" + payload + b"\n") if isinstance(payload, bytes) else f"s_1\t{payload}\n"
    replace_row(shard.parent / "s.img.tsv", 1, line)
    assert_rows_bad(shard, {"s_1"}, names=("s.img.tsv",))


@pytest.mark.parametrize("height, width", [(1, 1), (3, 2000)])
def test_small_or_thin_images_are_accepted(shard, height, width):
    replace_row(shard.parent / "s.img.tsv", 1, f"s_1\t{base64_text(png_bytes(height, width))}\n")
    replace_row(shard.parent / "s.hw.tsv", 1, f"s_1\t{json.dumps([{'height': height, 'width': width}])}\n")
    row = expect_ok(lambda: TSVDataset(shard)[1])
    assert row.image.shape == (height, width, 3) and row.image.dtype == np.uint8


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=6), st.sampled_from(["png", "jpg"]))
def test_flipped_bytes_in_an_image_give_a_bad_row_or_an_image(tmp_path_factory, positions, kind):
    directory = tmp_path_factory.mktemp("imgflip")
    yaml_path = write_shard(directory, "s", 1)
    data = png_bytes() if kind == "png" else jpeg_bytes()
    damaged = flip_bytes(data, positions)
    replace_row(directory / "s.img.tsv", 0, f"s_0\t{base64_text(damaged)}\n")
    size = "24 32" if kind == "png" else "48 64"
    replace_row(directory / "s.hw.tsv", 0, f"s_0\t{size}\n")
    status, row = expect_clean(lambda: TSVDataset(yaml_path)[0], names=("s_0",))
    if status == "ok":
        assert row.image.dtype == np.uint8 and row.image.ndim == 3 and row.image.shape[2] == 3


# ---------------------------------------------------------------------------- vertices .npy
def set_vertices(shard, data: bytes):
    (shard.parent / "s.vertices.npy").write_bytes(data)


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda d: npy_bytes(np.zeros((3, 8), np.float32)), "2-D"),
        (lambda d: npy_bytes(np.zeros((3, 8, 4), np.float32)), "(N, V, 4)"),
        (lambda d: npy_bytes(np.zeros((3, 8, 3), np.int32)), "integers"),
        (lambda d: npy_bytes(np.zeros((3, 8, 3), np.complex64)), "complex"),
        (lambda d: npy_bytes(np.zeros((3, 8, 3), bool)), "bool"),
        (lambda d: npy_bytes(np.zeros((3, 8, 3), [("a", "f4")])), "structured"),
        (lambda d: npy_bytes(np.array(["a"] * 72).reshape(3, 8, 3)), "strings"),
        (lambda d: object_npy_payload(d / "PWNED"), "pickled objects"),
        (lambda d: b"", "empty file"),
        (lambda d: np.random.default_rng(0).bytes(500), "random bytes"),
        (lambda d: npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (10**15, 8, 3)}), "huge header"),
        (
            lambda d: npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (3, 8, 3)}, b"\x00" * 50),
            "short data",
        ),
        (lambda d: npz_bytes({"vertices": np.zeros((3, 8, 3), np.float32)}), "an npz"),
        (lambda d: b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100, "broken header"),
    ],
)
def test_bad_vertices_file_is_one_clean_error(shard, make, what):
    set_vertices(shard, make(shard.parent))
    expect_error(read_everything, shard, names=("s.vertices.npy",))
    expect_error(MeshDataset(shard, TOPOLOGY).load, 0, names=("s.vertices.npy",))
    assert not (shard.parent / "PWNED").exists(), "a pickle payload ran"


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", "<f8"])
def test_vertices_of_any_float_dtype_are_accepted(shard, dtype):
    array = (np.arange(72).reshape(3, 8, 3) / 100).astype(dtype)
    set_vertices(shard, npy_bytes(array))
    rows = expect_ok(read_everything, shard)
    np.testing.assert_allclose(rows[2].vertices, array[2].astype(np.float32), rtol=1e-3)


def test_vertices_row_beyond_the_file_is_a_bad_row(shard):
    set_vertices(shard, npy_bytes(np.zeros((2, 8, 3), np.float32)))
    assert_rows_bad(shard, {"s_2"}, names=("s_2",))


def test_vertices_row_with_nan_is_a_bad_row(shard):
    array = np.zeros((3, 8, 3), np.float32)
    array[1, 4, 2] = np.nan
    set_vertices(shard, npy_bytes(array))
    assert_rows_bad(shard, {"s_1"}, names=("s.vertices.npy",))


# ---------------------------------------------------------------------------- linelist
@pytest.mark.parametrize(
    "text",
    [
        "0\n99999999999999999999\n",
        "0\n-1\n",
        "0\n7\n",
        "0\nx\n",
        "1.0\n",
        "0\t1\t2\n\x00\n",
    ],
)
def test_bad_linelist_is_an_error(shard, text):
    (shard.parent / "s.linelist.tsv").write_text(text)
    with open(shard, "a") as handle:
        handle.write("linelist: s.linelist.tsv\n")
    assert_dataset_error(shard, names=("s.",))


def test_linelist_of_binary_bytes_is_an_error(shard):
    (shard.parent / "s.linelist.tsv").write_bytes(b"\xff\xfe\x00garbage\x80\n")
    with open(shard, "a") as handle:
        handle.write("linelist: s.linelist.tsv\n")
    assert_dataset_error(shard, names=("s.linelist.tsv",))


def test_read_linelist_directly(tmp_path):
    path = tmp_path / "l.tsv"
    path.write_bytes(b"1\n\xff\n")
    expect_error(read_linelist, path, names=("l.tsv",))
    path.write_text("1\t2\n3\n")
    expect_error(read_linelist, path, columns=2, names=("l.tsv",))
    path.write_text("1\n\n 2 \n")
    assert expect_ok(read_linelist, path).tolist() == [1, 2]


# ---------------------------------------------------------------------------- dataset yaml
@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00\x01binary\x80",
        b"img: s.img.tsv\nlabel: s.label.tsv\xff\n",
        b"img: [unclosed\n",
        b"- a\n- list\n",
        b"just text",
        b"",
        b"img: 5\nlabel: s.label.tsv\n",
        b"img: [s.img.tsv]\nlabel: s.label.tsv\n",
        b"img: {a: 1}\nlabel: s.label.tsv\n",
        b"img: s.img.tsv\n",
        b"img: missing.tsv\nlabel: s.label.tsv\n",
        b"img: .\nlabel: s.label.tsv\n",
        b"img: s.img.tsv\nlabel: s.label.tsv\nvertices: missing.npy\n",
        b"img: s.img.tsv\nlabel: s.label.tsv\nlinelist: 3\n",
        b"img: !!python/object/apply:os.system ['touch PWNED']\nlabel: s.label.tsv\n",
        b"composite: true\nimg: [s.img.tsv, s.img.tsv]\nlabel: [s.label.tsv]\n",
        b"composite: true\nimg: [[s.img.tsv]]\nlabel: [[s.label.tsv]]\n",
        b"composite: true\nimg: [5]\nlabel: [6]\n",
        b"composite: true\nimg: []\nlabel: []\n",
        b"composite: true\nimg: missing_list.txt\nlabel: missing_list.txt\n",
    ],
)
def test_bad_dataset_yaml_is_an_error(shard, content):
    shard.write_bytes(content)
    assert_dataset_error(shard, names=("s",))
    assert not (shard.parent / "PWNED").exists()


def test_yaml_alias_bomb_is_refused_quickly(shard):
    lines = ["composite: true", "a0: &a0 [s.img.tsv, s.img.tsv, s.img.tsv, s.img.tsv, s.img.tsv]"]
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 6) + "]")
    lines += ["img: *a9", "label: *a9"]
    shard.write_text("\n".join(lines) + "\n")
    expect_error(read_yaml, shard, names=("s.yaml",), seconds=10)


def test_composite_list_file_of_binary_bytes_is_an_error(shard):
    (shard.parent / "list.txt").write_bytes(b"s.img.tsv\n\xff\xfe\n")
    shard.write_text("composite: true\nimg: list.txt\nlabel: list.txt\n")
    assert_dataset_error(shard, names=("list.txt",))


@given(st.lists(st.tuples(st.integers(0, 10**4), st.integers(1, 255)), min_size=1, max_size=6))
def test_flipped_bytes_in_a_dataset_yaml_are_clean(tmp_path_factory, flips):
    directory = tmp_path_factory.mktemp("yamlflip")
    yaml_path = write_shard(directory, "s", 2, with_vertices=True)
    data = bytearray(yaml_path.read_bytes())
    for position, xor in flips:
        data[position % len(data)] ^= xor
    yaml_path.write_bytes(bytes(data))
    expect_clean(read_everything, yaml_path)
    expect_clean(check_rows, yaml_path)


def test_tsv_file_helpers_refuse_cleanly(tmp_path):
    path = tmp_path / "x.tsv"
    expect_error(TSVFile, path, names=("x.tsv",))
    path.write_bytes(b"a\tb\n")
    lineidx_path(path).write_text("0\n")
    tsv = expect_ok(TSVFile, path)
    with pytest.raises(IndexError):
        tsv.read_bytes(5)
    assert base64.b64encode(b"x")


# ---------------------------------------------------------------------------- DataLoader workers
class _Failing(torch.utils.data.Dataset):
    """Row 1 raises a FastMetroError (not a BadRowError) naming a file, as the vertices reader does."""

    def __len__(self):
        return 3

    def __getitem__(self, index):
        if index == 1:
            raise FastMetroError("/data/x.vertices.npy: vertices must be a float (N, V, 3) array, got int32 (3, 8)")
        return index


@pytest.mark.parametrize("wrap", ["plain", "create_loader"])
def test_worker_errors_arrive_as_the_same_one_line(wrap):
    """The trainer and `eval` use plain DataLoaders; `create_loader` wraps one: both give one line."""
    from fastmetro.data.loader import create_loader

    loader = (
        torch.utils.data.DataLoader(_Failing(), batch_size=1, num_workers=1)
        if wrap == "plain"
        else create_loader(_Failing(), batch_size=1, num_workers=1)
    )
    error = expect_error(lambda: list(loader), names=("x.vertices.npy",))
    assert str(error) == "/data/x.vertices.npy: vertices must be a float (N, V, 3) array, got int32 (3, 8)"
