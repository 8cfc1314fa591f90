"""METRO TSV reader/writer: round trip, composites, lineidx generation, workers, atomicity."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
import yaml

from fastmetro.data.tsv import (
    BadRowError,
    TSVDataset,
    TSVDatasetWriter,
    TSVFile,
    lineidx_path,
    read_yaml,
    shard_is_complete,
    write_composite_yaml,
)
from fastmetro.errors import FastMetroError


def _image(seed: int, height=40, width=56) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _label(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "center": [20.0 + seed, 28.0],
        "scale": 0.25,
        "2d_joints": rng.random((24, 3)).round(6).tolist(),
        "has_2d_joints": 1,
        "3d_joints": rng.random((24, 4)).round(6).tolist(),
        "has_3d_joints": 1,
        "pose": np.zeros(72),
        "betas": np.zeros(10),
        "has_smpl": 0,
        "gender": "m",
    }


def _write_shard(tmp_path, name, count, image_format="png", with_vertices=False, offset=0):
    with TSVDatasetWriter(tmp_path, name, image_format=image_format) as writer:
        for i in range(count):
            vertices = np.full((5, 3), i + offset, np.float32) if with_vertices else None
            writer.add(f"{name}_{i}", _image(i + offset), _label(i + offset), vertices=vertices)
    return tmp_path / f"{name}.yaml"


def test_round_trip_png_exact_and_labels(tmp_path):
    yaml_path = _write_shard(tmp_path, "train", 6, "png", with_vertices=True)
    dataset = TSVDataset(yaml_path)
    assert len(dataset) == 6
    for i in range(6):
        row = dataset[i]
        assert row.key == f"train_{i}"
        np.testing.assert_array_equal(row.image, _image(i))
        expected = json.loads(json.dumps(_label(i), default=lambda a: a.tolist()))
        for field, value in expected.items():
            assert row.label[field] == value
        assert row.hw == (40, 56)
        assert row.label["has_vertices"] == 1 and row.label["vertices_row"] == i
        np.testing.assert_array_equal(row.vertices, np.full((5, 3), i, np.float32))
    # random access order does not matter
    assert dataset[4].key == "train_4" and dataset[1].key == "train_1"
    vertices = np.load(tmp_path / "train.vertices.npy", mmap_mode="r")
    assert vertices.shape == (6, 5, 3) and vertices.dtype == np.float32


def test_round_trip_jpeg_close_and_bytes_passthrough(tmp_path):
    import cv2

    smooth = np.zeros((64, 64, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 64)[None, :]
    smooth[..., 1] = 120
    png_bytes = cv2.imencode(".png", smooth[:, :, ::-1])[1].tobytes()
    with TSVDatasetWriter(tmp_path, "jpg", image_format="jpg") as writer:
        writer.add("a", smooth, {"center": [32, 32], "scale": 0.3})
        writer.add("b", png_bytes, {"center": [32, 32], "scale": 0.3})
    dataset = TSVDataset(tmp_path / "jpg.yaml")
    assert np.abs(dataset[0].image.astype(int) - smooth).mean() < 3.0
    np.testing.assert_array_equal(dataset[1].image, smooth)  # bytes stored unchanged
    assert dataset[0].label["has_vertices"] == 0 and dataset[0].vertices is None


def test_lineidx_generated_when_missing_and_stale_detected(tmp_path):
    yaml_path = _write_shard(tmp_path, "s", 3)
    index = lineidx_path(tmp_path / "s.img.tsv")
    original = index.read_text()
    index.unlink()
    dataset = TSVDataset(yaml_path)
    assert index.read_text() == original
    assert dataset[2].key == "s_2"
    index.write_text(original + "99999999\n")
    with pytest.raises(FastMetroError, match="stale .lineidx"):
        TSVFile(tmp_path / "s.img.tsv")


def test_writer_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with TSVDatasetWriter(tmp_path, "crash") as writer:
            writer.add("a", _image(0), _label(0))
            raise RuntimeError("boom")
    assert not shard_is_complete(tmp_path, "crash")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_input(tmp_path):
    with TSVDatasetWriter(tmp_path, "w") as writer:
        with pytest.raises(ValueError, match="NaN"):
            writer.add("a", _image(0), {"scale": float("nan")})
        with pytest.raises(ValueError, match="tabs"):
            writer.add("a\tb", _image(0), {})
        writer.add("a", _image(0), {}, vertices=np.zeros((4, 3)))
        with pytest.raises(ValueError, match="duplicate"):
            writer.add("a", _image(0), {})
        with pytest.raises(ValueError, match="vertices"):
            writer.add("b", _image(0), {}, vertices=np.zeros((5, 3)))
        with pytest.raises(ValueError, match="uint8"):
            writer.add("c", np.zeros((4, 4)), {})
    assert TSVDataset(tmp_path / "w.yaml").__len__() == 1


def test_composite_yaml_keys_and_vertices(tmp_path):
    first = _write_shard(tmp_path / "a", "part0", 3, with_vertices=True)
    second = _write_shard(tmp_path / "b", "part1", 2, offset=10)
    composite = write_composite_yaml(tmp_path / "train.yaml", [first, second])
    config = yaml.safe_load(composite.read_text())
    assert config["composite"] is True and config["num_rows"] == 5
    assert config["img"] == ["a/part0.img.tsv", "b/part1.img.tsv"]
    dataset = TSVDataset(composite)
    assert len(dataset) == 5
    keys = [dataset[i].key for i in range(5)]
    assert keys == [f"a/part0.img.tsv_part0_{i}" for i in range(3)] + [f"b/part1.img.tsv_part1_{i}" for i in range(2)]
    np.testing.assert_array_equal(dataset[2].vertices, np.full((5, 3), 2, np.float32))
    assert dataset[3].vertices is None
    np.testing.assert_array_equal(dataset[4].image, _image(11))


def test_handwritten_metro_yaml_with_linelist_and_hw_string(tmp_path):
    """A dataset as METRO lays it out by hand: 'H W' hw rows, a linelist, a label dict list."""
    import cv2

    rows_img, rows_label, rows_hw = [], [], []
    for i in range(4):
        encoded = base64.b64encode(cv2.imencode(".png", _image(i)[:, :, ::-1])[1].tobytes()).decode()
        rows_img.append(f"k{i}\t{encoded}\n")
        rows_label.append(f"k{i}\t{json.dumps([{'center': [1, 2], 'scale': 1.0, 'idx': i}])}\n")
        rows_hw.append(f"k{i}\t40 56\n")
    (tmp_path / "x.img.tsv").write_text("".join(rows_img))
    (tmp_path / "x.label.tsv").write_text("".join(rows_label))
    (tmp_path / "x.hw.tsv").write_text("".join(rows_hw))
    (tmp_path / "x.linelist.tsv").write_text("3\n1\n")
    (tmp_path / "x.yaml").write_text("img: x.img.tsv\nlabel: x.label.tsv\nhw: x.hw.tsv\nlinelist: x.linelist.tsv\n")
    dataset = TSVDataset(tmp_path / "x.yaml")
    assert len(dataset) == 2
    assert dataset[0].key == "k3" and dataset[0].label["idx"] == 3 and dataset[0].hw == (40, 56)
    np.testing.assert_array_equal(dataset[1].image, _image(1))
    spec = read_yaml(tmp_path / "x.yaml")
    assert not spec.composite and spec.rows.tolist() == [[0, 3], [0, 1]]


class _KeysAndPixels(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        row = self.dataset[index]
        return index, row.key, int(row.image.astype(np.int64).sum())


def test_random_access_from_two_workers(tmp_path):
    yaml_path = _write_shard(tmp_path, "w", 12)
    dataset = TSVDataset(yaml_path)
    dataset[0]  # open handles in the parent first: workers must not share its file position
    loader = torch.utils.data.DataLoader(
        _KeysAndPixels(dataset),
        batch_size=1,
        num_workers=2,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    seen = {}
    for index, key, total in loader:
        seen[int(index)] = (key[0], int(total))
    assert sorted(seen) == list(range(12))
    for index, (key, total) in seen.items():
        assert key == f"w_{index}"
        assert total == int(_image(index).astype(np.int64).sum())


def test_truncated_and_undecodable_rows_raise_bad_row(tmp_path):
    yaml_path = _write_shard(tmp_path, "t", 3)
    img = tmp_path / "t.img.tsv"
    lines = img.read_bytes().splitlines(keepends=True)
    # truncate the last row in the middle of its base64 payload
    img.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    dataset = TSVDataset(yaml_path)
    assert dataset[0].key == "t_0"
    with pytest.raises(BadRowError, match="t_2") as info:
        dataset[2]
    assert info.value.key == "t_2" and "t.img.tsv" in str(info.value)


def test_composite_with_list_files(tmp_path):
    _write_shard(tmp_path, "p0", 2)
    _write_shard(tmp_path, "p1", 3, offset=5)
    for name in ("img", "label", "hw"):
        (tmp_path / f"{name}.list.txt").write_text(f"p0.{name}.tsv\np1.{name}.tsv\n")
    (tmp_path / "pick.tsv").write_text("1\t2\n0\t0\n")
    (tmp_path / "all.yaml").write_text(
        "composite: true\nimg: img.list.txt\nlabel: label.list.txt\nhw: hw.list.txt\nlinelist: pick.tsv\n"
    )
    dataset = TSVDataset(tmp_path / "all.yaml")
    assert [dataset[i].key for i in range(2)] == ["p1.img.tsv_p1_2", "p0.img.tsv_p0_0"]
    np.testing.assert_array_equal(dataset[0].image, _image(7))
    (tmp_path / "pick.tsv").write_text("2\t0\n")
    with pytest.raises(FastMetroError, match="source outside"):
        TSVDataset(tmp_path / "all.yaml")


def test_unwritable_folder_keeps_the_index_in_memory(tmp_path, monkeypatch):
    import fastmetro.data.tsv.index as tsv

    _write_shard(tmp_path, "r", 3)
    for path in tmp_path.glob("*.lineidx"):
        path.unlink()

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(tsv, "atomic_write", refuse)
    dataset = TSVDataset(tmp_path / "r.yaml")
    assert dataset[2].key == "r_2" and dataset[0].key == "r_0"
    assert not list(tmp_path.glob("*.lineidx"))


def test_writer_removes_temporaries_of_a_killed_run(tmp_path):
    stale = tmp_path / ".s.img.tsv.abc123.tmp"
    stale.write_text("half a row")
    other = tmp_path / ".s_other.img.tsv.abc123.tmp"  # another shard's: left alone
    other.write_text("x")
    _write_shard(tmp_path, "s", 1)
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [other.name]
