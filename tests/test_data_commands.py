"""`fastmetro data check` and `fastmetro data convert`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from data_helpers import CUBE, image, make_bad_shard, write_shard
from fastmetro.cli import main
from fastmetro.data.check import check_dataset
from fastmetro.data.tsv import TSVDataset, write_composite_yaml


def test_check_good_dataset_exits_zero(tmp_path, capsys):
    yaml_path = write_shard(tmp_path, "good", 4, with_vertices=True)
    assert main(["data", "check", str(yaml_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "4 rows, 0 bad" in out and "vertices 4" in out


def test_check_bad_dataset_lists_keys_and_exits_nonzero(tmp_path, capsys):
    yaml_path, kinds = make_bad_shard(tmp_path)
    assert main(["data", "check", str(yaml_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "7 rows, 5 bad" in out
    for key in kinds:
        assert f"bad row {key!r}" in out
    report = check_dataset(yaml_path)
    assert list(report.bad_rows) == list(kinds)


def test_check_composite_with_topology_counts(tmp_path, capsys):
    first = write_shard(tmp_path / "a", "a", 2, with_vertices=True)
    second, _ = make_bad_shard(tmp_path / "b")
    composite = write_composite_yaml(tmp_path / "all.yaml", [first, second])
    report = check_dataset(composite, num_joints=14, num_vertices=8)
    assert report.num_rows == 9 and len(report.bad_rows) == 5
    assert all(key.startswith("b/bad.img.tsv_bad_") for key in report.bad_rows)
    wrong_topology = check_dataset(composite, num_joints=21)
    assert len(wrong_topology.bad_rows) == 9
    assert "has 14 joints, the topology has 21" in wrong_topology.bad_rows["a/a.img.tsv_a_0"]


def test_check_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.yaml" in err and err.count("\n") == 1


def _image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), image(0)[:, :, ::-1])
    cv2.imwrite(str(folder / "sub" / "b.jpg"), image(1)[:, :, ::-1])
    cv2.imwrite(str(folder / "c.bmp"), image(2)[:, :, ::-1])
    return folder


def test_convert_from_json(tmp_path, capsys):
    folder = _image_folder(tmp_path)
    joints_2d = np.random.default_rng(0).uniform(0, 60, (14, 2))
    records = [
        {
            "file": "a.png",
            "center": [40, 30],
            "scale": 0.3,
            "joints_2d": joints_2d.tolist(),
            "joints_3d": np.ones((14, 3)).tolist(),
            "vertices": CUBE.tolist(),
            "joints_format": "topology",
        },
        {"file": "sub/b.jpg", "key": "bee", "bbox": [10, 5, 50, 40], "pose": [0.0] * 72, "betas": [0.1] * 10},
        {"file": "c.bmp"},
    ]
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({"images": records}))
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "convert",
                "--images",
                str(folder),
                "--annotations",
                str(annotations),
                "--out",
                str(out),
                "--name",
                "mine",
            ]
        )
        == 0
    )
    dataset = TSVDataset(out / "mine.yaml")
    assert [dataset[i].key for i in range(3)] == ["a.png", "bee", "c.bmp"]
    first = dataset[0]
    np.testing.assert_array_equal(first.image, image(0))  # PNG bytes kept
    np.testing.assert_allclose(np.array(first.label["2d_joints"])[:, :2], joints_2d)
    assert np.array(first.label["2d_joints"])[:, 2].tolist() == [1.0] * 14
    assert np.array(first.label["3d_joints"]).shape == (14, 4) and first.label["joints_format"] == "topology"
    np.testing.assert_allclose(first.vertices, CUBE, atol=1e-6)
    second = dataset[1].label
    assert second["center"] == [35.0, 25.0] and second["scale"] == pytest.approx(1.2 * 50 / 200)
    assert second["has_smpl"] == 1 and second["has_2d_joints"] == 0 and dataset[1].vertices is None
    third = dataset[2]
    assert third.label["scale"] == pytest.approx(80 / 200) and third.image.shape == (60, 80, 3)
    np.testing.assert_array_equal(third.image, image(2))  # BMP re-encoded losslessly (PNG)
    assert main(["data", "check", str(out / "mine.yaml"), "--quiet"]) == 0


def test_convert_from_npz_and_bad_annotations(tmp_path, capsys):
    folder = _image_folder(tmp_path)
    annotations = tmp_path / "ann.npz"
    np.savez(
        annotations,
        image=np.array(["a.png", "sub/b.jpg"]),
        center=np.array([[40, 30], [40, 30]]),
        scale=np.array([0.3, 0.3]),
        joints_2d=np.zeros((2, 24, 3)),
    )
    assert (
        main(
            [
                "data",
                "convert",
                "--images",
                str(folder),
                "--annotations",
                str(annotations),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    dataset = TSVDataset(tmp_path / "o" / "train.yaml")
    assert len(dataset) == 2 and np.array(dataset[1].label["2d_joints"]).shape == (24, 3)

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"file": "missing.png"}]))
    assert (
        main(["data", "convert", "--images", str(folder), "--annotations", str(broken), "--out", str(tmp_path / "p")])
        == 2
    )
    err = capsys.readouterr().err
    assert "record 0 (missing.png): image not found" in err and err.count("\n") == 1
    assert not (tmp_path / "p" / "train.yaml").exists()  # nothing half-written
    nan = tmp_path / "nan.json"
    nan.write_text('[{"file": "a.png", "joints_2d": [[NaN, 1.0]]}]')
    assert (
        main(["data", "convert", "--images", str(folder), "--annotations", str(nan), "--out", str(tmp_path / "q")]) == 2
    )
    assert "NaN" in capsys.readouterr().err
