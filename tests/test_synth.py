"""The synthetic Anny dataset: readable by the same reader, self-consistent labels, deterministic,
resumable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fastmetro.data.synthetic.generator import (
    SynthConfig,
    generate,
    plan_shards,
    read_masks,
    write_preview,
)
from fastmetro.data.tsv import TSVDataset, read_yaml
from fastmetro.errors import FastMetroError


def shard_yamls(dataset, split):
    return [dataset.config.out_dir / f"{s.name}.yaml" for s in plan_shards(dataset.config) if s.split == split]


def file_digests(folder: Path, prefix: str) -> dict[str, tuple[int, str]]:
    return {
        path.name: (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.glob(f"{prefix}*"))
    }


def test_dataset_reads_back_with_every_label(synthetic_dataset):
    config = synthetic_dataset.config
    train, test = TSVDataset(synthetic_dataset.train_yaml), TSVDataset(synthetic_dataset.test_yaml)
    assert (len(train), len(test)) == (12, 4)
    keys = [train.key(i) for i in range(len(train))] + [test.key(i) for i in range(len(test))]
    assert len(set(keys)) == 16
    row = train[0]
    assert row.image.shape == (config.size, config.size, 3) and row.image.dtype == np.uint8
    assert row.vertices.shape == (synthetic_dataset.maker.body.label_mesh.anny_indices.shape[0], 3)
    label = row.label
    for field in ("center", "scale", "2d_joints", "3d_joints", "camera", "anny_phenotypes"):
        assert field in label, field
    assert np.shape(label["2d_joints"]) == (14, 3) and np.shape(label["3d_joints"]) == (14, 4)
    assert (label["has_2d_joints"], label["has_3d_joints"], label["has_smpl"], label["has_vertices"]) == (1, 1, 0, 1)
    assert label["joints_format"] == "topology"


def test_mesh_dataset_reads_synthetic_rows(synthetic_dataset):
    from fastmetro import topology
    from fastmetro.data.dataset import MeshDataset

    dataset = MeshDataset(synthetic_dataset.train_yaml, topology.load("anny"), image_size=64)
    sample = dataset[3]
    assert sample["image"].shape == (3, 64, 64)
    assert sample["vertices"].shape == (topology.load("anny").num_vertices, 3)
    assert float(sample["has_vertices"]) == 1.0 and float(sample["has_joints_3d"]) == 1.0
    # Crop-normalised 2D joints of an in-view body stay inside [-1, 1].
    assert np.abs(np.asarray(sample["joints_2d"])[:, :2]).max() <= 1.0


def check_sample_labels(row, mask, size, regressor) -> tuple[int, int]:
    """Assert one sample's labels agree with each other and with its render.

    Returns (visible joints, visible joints on the body mask) for the caller's tally.
    """
    label = row.label
    camera = label["camera"]
    intrinsics = np.array([[camera["fx"], 0, camera["cx"]], [0, camera["fy"], camera["cy"]], [0, 0, 1]])
    joints_3d = np.asarray(label["3d_joints"])[:, :3]
    joints_2d = np.asarray(label["2d_joints"])
    # 3D joints = topology regressor @ stored vertices (camera coordinates, metres).
    np.testing.assert_allclose(regressor @ row.vertices, joints_3d, atol=1e-4)
    # Projecting the 3D joints with the stored intrinsics gives the stored 2D joints.
    projected = joints_3d @ intrinsics.T
    np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], joints_2d[:, :2], atol=1e-3)
    # Visibility is exactly "inside the image": 1 in, 0 out (cut bodies have some 0s).
    inside = (joints_2d[:, :2] >= -0.5).all(1) & (joints_2d[:, :2] <= size - 0.5).all(1)
    np.testing.assert_array_equal(joints_2d[:, 2], inside.astype(float))
    assert inside.sum() >= 6, row.key  # a cut body keeps at least 6 joints in view
    # The mask covers real body pixels, inside the projected mesh's box (clipped to the image).
    assert mask.sum() > 0.005 * mask.size, row.key
    vertices_2d = row.vertices @ intrinsics.T
    vertices_2d = vertices_2d[:, :2] / vertices_2d[:, 2:]
    rows_, cols_ = np.nonzero(mask)
    low, high = vertices_2d.min(0), vertices_2d.max(0)
    assert cols_.min() >= low[0] - 1 and cols_.max() <= high[0] + 1
    assert rows_.min() >= low[1] - 1 and rows_.max() <= high[1] + 1
    # The image is non-empty where the mask says the body is (lit, not black/flat).
    body_pixels = row.image[mask].astype(np.float64)
    assert body_pixels.mean() > 8 and body_pixels.std() > 1
    # The box (center, scale) encloses the visible part of the projected mesh.
    half_side = 100.0 * label["scale"]
    visible_2d = np.clip(vertices_2d, -0.5, size - 0.5)
    assert (np.abs(visible_2d - np.asarray(label["center"])) <= half_side + 1e-6).all()
    # Visible joints lie on the body (the mask, grown by 2 px; occluders may hide a few).
    grown = np.zeros_like(mask)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
    pixels = np.clip(np.round(joints_2d[inside, :2]).astype(int), 0, size - 1)
    return int(inside.sum()), int(grown[pixels[:, 1], pixels[:, 0]].sum())


def test_labels_are_consistent_with_images_and_each_other(synthetic_dataset):
    config = synthetic_dataset.config
    regressor = synthetic_dataset.maker.body.label_mesh.joint_regressor
    visible = on_body = cut = 0
    for split in ("train", "test"):
        for shard_yaml in shard_yamls(synthetic_dataset, split):
            rows = TSVDataset(shard_yaml)
            masks = read_masks(shard_yaml, config.size)
            assert len(masks) == len(rows)
            for index in range(len(rows)):
                counts = check_sample_labels(rows[index], masks[index], config.size, regressor)
                visible, on_body = visible + counts[0], on_body + counts[1]
                cut += rows[index].label["cut_by_border"]
    assert on_body >= 0.85 * visible
    assert 0 < cut < 16  # seed 7 draws both framings


def test_cut_bodies_mark_the_joints_outside_the_image(synthetic_dataset, tmp_path, monkeypatch):
    from fastmetro.data.synthetic import framing

    monkeypatch.setattr(framing, "CUT_PROBABILITY", 1.0)
    config = SynthConfig(
        **{
            **synthetic_dataset.config.__dict__,
            "out_dir": tmp_path,
            "num": 6,
            "shard_size": 6,
            "test_fraction": 0.0,
            "occluders": False,
        }
    )
    report = generate(config, progress=False, maker=synthetic_dataset.maker)
    rows = TSVDataset(report.yamls["train"])
    masks = read_masks(tmp_path / "train_00000.yaml", config.size)
    regressor = synthetic_dataset.maker.body.label_mesh.joint_regressor
    hidden = 0
    for index in range(len(rows)):
        visible, on_body = check_sample_labels(rows[index], masks[index], config.size, regressor)
        assert on_body == visible  # no occluders: every visible joint is on the body
        hidden += 14 - visible
        assert rows[index].label["cut_by_border"] in (0, 1)
    assert hidden > 0  # close-ups do cut bodies


def test_same_seed_gives_the_same_bytes(synthetic_dataset, tmp_path):
    config = SynthConfig(**{**synthetic_dataset.config.__dict__, "out_dir": tmp_path})
    generate(config, progress=False, max_shards=1, maker=synthetic_dataset.maker)
    original = synthetic_dataset.config.out_dir
    for suffix in ("img.tsv", "label.tsv", "vertices.npy", "masks.npy"):
        assert (tmp_path / f"train_00000.{suffix}").read_bytes() == (original / f"train_00000.{suffix}").read_bytes()
    # Another seed gives other data.
    other = SynthConfig(**{**config.__dict__, "out_dir": tmp_path / "other", "seed": 8})
    generate(other, progress=False, max_shards=1, maker=synthetic_dataset.maker)
    assert (tmp_path / "other/train_00000.label.tsv").read_bytes() != (original / "train_00000.label.tsv").read_bytes()


def test_samples_do_not_depend_on_the_shard_layout(synthetic_dataset, tmp_path):
    # Sample i is drawn from (seed, i) only: a different shard size gives the same rows.
    config = SynthConfig(**{**synthetic_dataset.config.__dict__, "out_dir": tmp_path, "shard_size": 8})
    generate(config, progress=False, max_shards=1, maker=synthetic_dataset.maker)
    regrouped = TSVDataset(tmp_path / "train_00000.yaml")
    original = TSVDataset(synthetic_dataset.config.out_dir / "train_00001.yaml")
    for index in range(4):
        assert regrouped.key(4 + index) == original.key(index)
        assert regrouped.label(4 + index)[1]["2d_joints"] == original.label(index)[1]["2d_joints"]
        np.testing.assert_array_equal(regrouped[4 + index].image, original[index].image)


def test_interrupted_run_resumes_without_touching_finished_shards(synthetic_dataset, tmp_path, monkeypatch):
    config = SynthConfig(**{**synthetic_dataset.config.__dict__, "out_dir": tmp_path, "num": 12, "test_fraction": 0.0})
    maker = synthetic_dataset.maker
    first = generate(config, progress=False, max_shards=1, maker=maker)
    assert first.written == ["train_00000"] and not first.yamls
    assert not (tmp_path / "train.yaml").exists()

    # Crash in the middle of the second shard: nothing of it is published.
    calls = {"count": 0}
    real_render = type(maker).render_sample

    def crashing(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(type(maker), "render_sample", crashing)
    with pytest.raises(KeyboardInterrupt):
        generate(config, progress=False, maker=maker)
    monkeypatch.setattr(type(maker), "render_sample", real_render)
    assert not (tmp_path / "train_00001.yaml").exists()
    assert not list(tmp_path.glob("train_00001.*.tsv"))
    finished = file_digests(tmp_path, "train_00000")
    # A run killed hard leaves temporaries behind: the rerun removes those of the shards it writes.
    (tmp_path / ".train_00001.img.tsv.abc123.tmp").write_text("half a shard")

    resumed = generate(config, progress=False, maker=maker)
    assert resumed.skipped == ["train_00000"]
    assert resumed.written == ["train_00001", "train_00002"]
    assert file_digests(tmp_path, "train_00000") == finished  # same mtimes, same bytes
    assert len(TSVDataset(resumed.yamls["train"])) == 12
    assert not list(tmp_path.glob(".*.tmp"))
    # A third run has nothing to do.
    assert generate(config, progress=False, maker=maker).written == []


def test_other_settings_in_the_same_folder_are_refused(synthetic_dataset):
    config = SynthConfig(**{**synthetic_dataset.config.__dict__, "seed": 99})
    with pytest.raises(FastMetroError, match="seed=7"):
        generate(config, progress=False, maker=synthetic_dataset.maker)
    manifest = json.loads((synthetic_dataset.config.out_dir / "synth.json").read_text())
    assert manifest["seed"] == 7


def test_datasets_made_before_the_backgrounds_setting_still_resume(synthetic_dataset, tmp_path):
    from fastmetro.data.synthetic.generator import check_manifest

    config = SynthConfig(**{**synthetic_dataset.config.__dict__, "out_dir": tmp_path})
    manifest = config.manifest()
    assert manifest.pop("backgrounds") == "mixed"
    (tmp_path / "synth.json").write_text(json.dumps(manifest))  # as written by generator version 1
    check_manifest(config)  # same settings: accepted
    studio = SynthConfig(**{**config.__dict__, "backgrounds": "studio"})
    with pytest.raises(FastMetroError, match="backgrounds='mixed' \\(now 'studio'\\)"):
        check_manifest(studio)
    with pytest.raises(FastMetroError, match="backgrounds must be one of"):
        generate(SynthConfig(**{**config.__dict__, "backgrounds": "jungle"}), progress=False)


def test_composite_yamls_list_every_shard(synthetic_dataset):
    spec = read_yaml(synthetic_dataset.train_yaml)
    assert spec.composite and len(spec.sources) == 3
    assert all(source.vertices is not None for source in spec.sources)


def test_preview_sheet(synthetic_dataset, tmp_path):
    import cv2

    path = write_preview(synthetic_dataset.train_yaml, tmp_path / "preview.png", tile=96)
    sheet = cv2.imread(str(path))
    assert sheet.shape == (288, 288, 3)
    for row in range(3):
        for col in range(3):
            tile = sheet[row * 96 : (row + 1) * 96, col * 96 : (col + 1) * 96]
            assert tile.std() > 5  # every cell holds an image, none black


def test_cli_rejects_bad_arguments_with_one_line(tmp_path, capsys):
    from fastmetro.cli import main

    assert main(["synth", "--out", str(tmp_path), "--num", "0"]) == 2
    assert "--num must be at least 1" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--num", "4", "--shard-size", "0"]) == 2


@pytest.mark.slow
def test_two_workers_write_the_same_bytes_as_one(synthetic_dataset, tmp_path):
    config = SynthConfig(**{**synthetic_dataset.config.__dict__, "out_dir": tmp_path, "workers": 2})
    report = generate(config, progress=False)
    assert sorted(report.written) == sorted(s.name for s in plan_shards(config))
    original = synthetic_dataset.config.out_dir
    for shard in plan_shards(config):
        for suffix in ("img.tsv", "label.tsv", "vertices.npy"):
            assert (tmp_path / f"{shard.name}.{suffix}").read_bytes() == (
                original / f"{shard.name}.{suffix}"
            ).read_bytes()


def test_generation_leaves_autograd_enabled(synthetic_dataset):
    # The generator runs Anny without autograd, but must not switch it off for the process
    # (a training run in the same process would then have no gradients).
    import torch

    assert torch.is_grad_enabled()


def test_version_1_folders_resume_as_version_1(synthetic_dataset, tmp_path):
    # A folder started before pose families existed: its synth.json has no poses/split keys and
    # generator_version 1. Rerunning the same command (no --poses / --split) resumes it with the
    # version-1 samplers: standing poses, whole bodies in view, no family in the labels.
    from fastmetro.cli import main
    from fastmetro.data.synthetic.commands import resumed_settings

    config = SynthConfig(
        **{
            **synthetic_dataset.config.__dict__,
            "out_dir": tmp_path,
            "num": 4,
            "shard_size": 2,
            "test_fraction": 0.0,
            "generator_version": 1,
            "poses": "standing",
        }
    )
    manifest = config.manifest()
    del manifest["poses"], manifest["split"]
    (tmp_path / "synth.json").write_text(json.dumps(manifest))
    assert resumed_settings(tmp_path, None, None) == {"poses": "standing", "split": "train", "generator_version": 1}
    generate(config, progress=False, max_shards=1, maker=synthetic_dataset.maker)
    # The rerun, as the CLI builds it (in-process with the loaded maker: one GL context per process).
    resumed = SynthConfig(
        **{
            **synthetic_dataset.config.__dict__,
            "out_dir": tmp_path,
            "num": 4,
            "shard_size": 2,
            "test_fraction": 0.0,
            **resumed_settings(tmp_path, None, None),
        }
    )
    assert generate(resumed, progress=False, maker=synthetic_dataset.maker).written == ["train_00001"]
    rows = TSVDataset(tmp_path / "train.yaml")
    assert len(rows) == 4
    for index in range(4):
        label = rows.label(index)[1]
        assert "pose_family" not in label
        assert (np.asarray(label["2d_joints"])[:, 2] == 1).all()
    # Asking for version-2 settings in that folder is refused, naming the setting.
    args = [
        "synth",
        "--out",
        str(tmp_path),
        "--num",
        "4",
        "--seed",
        "7",
        "--size",
        "64",
        "--shard-size",
        "2",
        "--test-fraction",
        "0",
        "--quiet",
        "--poses",
        "mixed",
    ]
    assert main(args) == 2
    # A fresh folder gets the current version and the mixed poses.
    assert resumed_settings(tmp_path / "new", None, None) == {
        "poses": "mixed",
        "split": "train",
        "generator_version": 2,
    }
    # Version 1 asked for explicitly (the demo's data): standing poses.
    assert resumed_settings(tmp_path / "new", None, None, 1) == {
        "poses": "standing",
        "split": "train",
        "generator_version": 1,
    }


def test_generalisation_split_is_a_disjoint_test_set(synthetic_dataset, tmp_path):
    maker = synthetic_dataset.maker
    config = SynthConfig(
        **{
            **synthetic_dataset.config.__dict__,
            "out_dir": tmp_path,
            "num": 8,
            "shard_size": 8,
            "split": "generalisation",
            "poses": "crawling=3,sitting=1",
        }
    )
    report = generate(config, progress=False, maker=maker)
    assert set(report.yamls) == {"test"}  # all of it is test data
    rows = TSVDataset(report.yamls["test"])
    families = {rows.label(i)[1]["pose_family"] for i in range(len(rows))}
    assert families == {"crawling", "sitting"}
    # Salted streams: sample i of the generalisation split is another body than sample i of train.
    train_phenotypes = [TSVDataset(synthetic_dataset.train_yaml).label(i)[1]["anny_phenotypes"] for i in range(4)]
    assert all(rows.label(i)[1]["anny_phenotypes"] != train_phenotypes[i] for i in range(4))
    # The training split never draws a held-out family, even when asked.
    with pytest.raises(FastMetroError, match="held out"):
        generate(SynthConfig(**{**config.__dict__, "out_dir": tmp_path / "t", "split": "train"}), progress=False)
    train_families = {TSVDataset(synthetic_dataset.train_yaml).label(i)[1]["pose_family"] for i in range(12)}
    assert "crawling" not in train_families and len(train_families) >= 4
    maker.reconfigure(synthetic_dataset.config)


def test_cli_rejects_unknown_pose_families(tmp_path, capsys):
    from fastmetro.cli import main

    assert main(["synth", "--out", str(tmp_path), "--num", "4", "--poses", "flying"]) == 2
    assert "unknown pose family 'flying'" in capsys.readouterr().err
