"""MeshDataset samples, ground-truth sources, bad rows, workers and multi-dataset mixing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_helpers import (
    CUBE,
    image,
    label,
    make_bad_shard,
    tiny_body_model_arrays,
    tiny_topology,
    write_shard,
)
from fastmetro.data.augment import AugmentConfig, AugmentParams, transform_joints_2d
from fastmetro.data.body_models import BodyModel
from fastmetro.data.dataset import MeshDataset, MixedDataset
from fastmetro.data.labels import J24_TO_J14
from fastmetro.data.loader import create_loader
from fastmetro.data.tsv import TSVDatasetWriter
from fastmetro.errors import FastMetroError

SIZE = 32


@pytest.fixture(scope="module")
def topology():
    return tiny_topology()


@pytest.fixture(scope="module")
def body_model():
    return BodyModel(tiny_body_model_arrays())


def _mixed_shard(directory):
    """Rows: j24 joints + vertices; topology joints without 3D; SMPL-style pose/betas."""
    j24 = label(0, joints=24)
    pose = np.random.default_rng(5).normal(scale=0.3, size=15)
    smpl = {"center": [40.0, 30.0], "scale": 0.3, "pose": pose, "betas": np.linspace(-1, 1, 10), "has_smpl": 1}
    with TSVDatasetWriter(directory, "mixed", image_format="png") as writer:
        writer.add("j24", image(0), j24, vertices=CUBE * 1.5 + [0.2, 0.1, 3.0])
        writer.add("no3d", image(1), label(1, with_3d=False))
        writer.add("smpl", image(2), smpl)
    return directory / "mixed.yaml", j24, pose


def test_eval_samples_shapes_centring_and_sources(tmp_path, topology, body_model):
    yaml_path, j24, pose = _mixed_shard(tmp_path)
    dataset = MeshDataset(yaml_path, topology, train=False, image_size=SIZE, body_model=body_model)
    sample = dataset[0]
    assert set(sample) == {
        "image",
        "joints_2d",
        "joints_3d",
        "vertices",
        "has_joints_2d",
        "has_joints_3d",
        "has_vertices",
        "key",
        "smpl_pose",
        "smpl_betas",
        "has_smpl",
    }  # with a body model
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert sample["joints_2d"].shape == (14, 3) and sample["joints_3d"].shape == (14, 4)
    assert sample["vertices"].shape == (8, 3) and sample["key"] == "j24"
    # released J24 handling: J24_TO_J14, then centred on the mean of the root joints (hips)
    expected_3d = j24["3d_joints"][list(J24_TO_J14)].copy()
    expected_3d[:, :3] -= expected_3d[[2, 3], :3].mean(0)
    np.testing.assert_allclose(sample["joints_3d"].numpy(), expected_3d, atol=1e-5)
    expected_2d = transform_joints_2d(
        j24["2d_joints"][list(J24_TO_J14)], j24["center"], j24["scale"], AugmentParams(), None
    )
    np.testing.assert_allclose(sample["joints_2d"].numpy(), expected_2d, atol=1e-5)
    stored = CUBE * 1.5 + [0.2, 0.1, 3.0]
    np.testing.assert_allclose(sample["vertices"].numpy(), stored - stored.mean(0), atol=1e-5)
    assert [float(sample[k]) for k in ("has_joints_2d", "has_joints_3d", "has_vertices")] == [1, 1, 1]

    no3d = dataset[1]
    assert [float(no3d[k]) for k in ("has_joints_2d", "has_joints_3d", "has_vertices")] == [1, 0, 0]
    assert no3d["joints_3d"].abs().sum() == 0 and no3d["vertices"].abs().sum() == 0

    smpl = dataset[2]
    assert [float(smpl[k]) for k in ("has_joints_2d", "has_joints_3d", "has_vertices")] == [0, 0, 1]
    expected = (
        body_model(torch.tensor(pose[None], dtype=torch.float32), torch.linspace(-1, 1, 10)[None]).vertices[0].numpy()
    )
    np.testing.assert_allclose(smpl["vertices"].numpy(), expected - expected.mean(0), atol=1e-5)
    # the image is the crop of the stored picture: box side 60 px around (40, 30) = whole image
    crop = (smpl["image"].permute(1, 2, 0).numpy() * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406]) * 255
    import cv2

    reference = cv2.resize(image(2)[:, 10:70], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    assert np.abs(crop - reference).mean() < 40  # same picture (resampling differs), not noise vs noise

    without_model = MeshDataset(yaml_path, topology, train=False, image_size=SIZE)
    assert float(without_model[2]["has_vertices"]) == 0


def test_flip_through_the_dataset_moves_every_target(tmp_path, topology):
    yaml_path, _, _ = _mixed_shard(tmp_path)
    plain = MeshDataset(yaml_path, topology, train=False, image_size=SIZE)[0]
    only_flip = AugmentConfig(flip_prob=1.0, rotation_std=0.0, scale_std=0.0, noise=0.0)
    flipped = MeshDataset(yaml_path, topology, train=True, augment=only_flip, image_size=SIZE)[0]
    flip = list(topology.joint_flip)
    expected_2d = plain["joints_2d"][flip].clone()
    expected_2d[:, 0] *= -1
    torch.testing.assert_close(flipped["joints_2d"], expected_2d)
    expected_3d = plain["joints_3d"][flip].clone()
    expected_3d[:, 0] *= -1
    torch.testing.assert_close(flipped["joints_3d"], expected_3d, atol=1e-6, rtol=0)
    expected_vertices = plain["vertices"][list(topology.vertex_flip)].clone()
    expected_vertices[:, 0] *= -1
    torch.testing.assert_close(flipped["vertices"], expected_vertices, atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))


def test_train_draws_are_reproducible_and_vary(tmp_path, topology):
    yaml_path = write_shard(tmp_path, "s", 2)
    config = AugmentConfig(rotation_zero_prob=0.0)

    def draw():
        torch.manual_seed(3)
        dataset = MeshDataset(yaml_path, topology, train=True, augment=config, image_size=SIZE)
        return [dataset[0]["joints_2d"] for _ in range(3)]

    first, second = draw(), draw()
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(first[0], first[1])
    eval_set = MeshDataset(yaml_path, topology, train=False, augment=config, image_size=SIZE)
    torch.testing.assert_close(eval_set[0]["joints_2d"], eval_set[0]["joints_2d"])


def test_bad_rows_raise_one_line_or_are_skipped(tmp_path, topology, caplog):
    yaml_path, kinds = make_bad_shard(tmp_path)
    strict = MeshDataset(yaml_path, topology, image_size=SIZE)
    assert strict[0]["key"] == "bad_0" and strict[6]["key"] == "bad_6"
    for index, (key, kind) in enumerate(kinds.items(), start=1):
        with pytest.raises(FastMetroError) as info:
            strict[index]
        message = str(info.value)
        assert "\n" not in message and repr(key) in message and "bad." in message
        assert any(part in message for part in kind.split("|")), message

    lenient = MeshDataset(yaml_path, topology, image_size=SIZE, skip_bad_rows=True)
    with caplog.at_level("WARNING", logger="fastmetro.data"):
        keys = [lenient[i]["key"] for i in range(len(lenient))]
    assert keys == ["bad_0"] + ["bad_6"] * 5 + ["bad_6"]  # each bad row replaced by the next good one
    assert sorted(lenient.skipped) == sorted(kinds)
    assert sum("skipping bad row" in r.message for r in caplog.records) == 5


def test_bad_row_in_a_worker_reaches_the_user_as_one_line(tmp_path, topology):
    yaml_path, _ = make_bad_shard(tmp_path)
    loader = create_loader(MeshDataset(yaml_path, topology, image_size=SIZE), batch_size=2, num_workers=2)
    with pytest.raises(FastMetroError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert "\n" not in message and "bad.label.tsv" in message and "bad_1" in message
    # a plain torch DataLoader (no SafeLoader) also surfaces the one-line message
    plain = torch.utils.data.DataLoader(MeshDataset(yaml_path, topology, image_size=SIZE), batch_size=2, num_workers=2)
    with pytest.raises(FastMetroError) as info:
        for _ in plain:
            pass
    assert str(info.value) == message
    lenient = create_loader(
        MeshDataset(yaml_path, topology, image_size=SIZE, skip_bad_rows=True), batch_size=4, num_workers=2
    )
    batches = list(lenient)
    assert sum(len(b["key"]) for b in batches) == 7
    assert batches[0]["image"].shape == (4, 3, SIZE, SIZE)


def test_wrong_vertex_count_is_a_bad_row(tmp_path, topology):
    with TSVDatasetWriter(tmp_path, "v", image_format="png") as writer:
        writer.add("v0", image(0), label(0), vertices=np.zeros((5, 3)))
    with pytest.raises(FastMetroError, match="topology 'tiny' needs \\(8, 3\\)"):
        MeshDataset(tmp_path / "v.yaml", topology, image_size=SIZE)[0]


def test_body_model_must_match_topology(tmp_path, topology):
    arrays = tiny_body_model_arrays()
    arrays = {
        **arrays,
        "v_template": np.zeros((6, 3)),
        "shapedirs": arrays["shapedirs"][:6],
        "posedirs": arrays["posedirs"][:6],
        "J_regressor": arrays["J_regressor"][:, :6],
        "weights": arrays["weights"][:6],
    }
    with pytest.raises(FastMetroError, match="6 vertices"):
        MeshDataset(write_shard(tmp_path, "s", 1), topology, body_model=BodyModel(arrays))


def test_mixing_keeps_per_sample_flags_and_weights(tmp_path, topology):
    with_vertices = MeshDataset(write_shard(tmp_path / "a", "a", 3, with_vertices=True), topology, image_size=SIZE)
    without = MeshDataset(write_shard(tmp_path / "b", "b", 9), topology, image_size=SIZE)
    mixed = MixedDataset([with_vertices, without], weights=[0.5, 0.5])
    assert len(mixed) == 12
    flags = [float(mixed[i]["has_vertices"]) for i in range(12)]
    assert flags == [1.0] * 3 + [0.0] * 9
    weights = mixed.sample_weights()
    assert torch.isclose(weights[:3].sum(), torch.tensor(0.5, dtype=torch.float64))
    draws = list(mixed.sampler(num_samples=6000, generator=torch.Generator().manual_seed(0)))
    share = np.mean(np.array(draws) < 3)
    assert abs(share - 0.5) < 0.03  # the small dataset is drawn as often as the big one
    batch = next(iter(create_loader(mixed, batch_size=12)))
    assert batch["has_vertices"].tolist() == flags
    plain = MixedDataset([with_vertices, without])
    assert torch.isclose(plain.sample_weights()[:3].sum(), torch.tensor(0.25, dtype=torch.float64))
    with pytest.raises(FastMetroError, match="weights"):
        MixedDataset([with_vertices, without], weights=[1.0])


def test_label_json_of_released_layout_is_read(tmp_path, topology):
    """Nested 2d_joints (one extra level) and has_* given as lists, as some released files do."""
    nested = label(0, joints=24)
    nested["2d_joints"] = [nested["2d_joints"].tolist()]
    nested["has_2d_joints"] = [1]
    with TSVDatasetWriter(tmp_path, "n", image_format="png") as writer:
        writer.add("n0", image(0), json.loads(json.dumps(nested, default=lambda a: a.tolist())))
    sample = MeshDataset(tmp_path / "n.yaml", topology, image_size=SIZE)[0]
    assert float(sample["has_joints_2d"]) == 1


def test_released_body_row_with_the_smpl_topology(tmp_path, smpl_topology):
    j24 = label(0, joints=24)
    vertices = np.asarray(smpl_topology.template) + [0.0, 0.0, 4.0]
    with TSVDatasetWriter(tmp_path, "h36m", image_format="png") as writer:
        writer.add("s1", image(0), j24, vertices=vertices)
    dataset = MeshDataset(tmp_path / "h36m.yaml", smpl_topology, train=True, augment=AugmentConfig(), image_size=64)
    assert dataset.augment.flip_prob == 0.5  # SMPL has a vertex flip
    for _ in range(4):
        sample = dataset[0]
        assert sample["vertices"].shape == (6890, 3) and sample["joints_3d"].shape == (14, 4)
        regressor = np.array(smpl_topology.root_regressor)
        pelvis = torch.as_tensor(regressor, dtype=torch.float32) @ sample["vertices"]
        # the H36M pelvis row sums to 1 - 1e-4, so centring leaves (1 - sum) * depth of offset
        assert pelvis.abs().max() < abs(1 - regressor.sum()) * 4.5 + 1e-5
        assert sample["joints_3d"][[2, 3], :3].mean(0).abs().max() < 1e-5
        # augmentation is rigid in 3D: distances between vertices are preserved (up to the 1 mm
        # tolerance of SMPL's mirror permutation when the draw flipped)
        original = np.linalg.norm(vertices[100] - vertices[5000])
        assert abs(float((sample["vertices"][100] - sample["vertices"][5000]).norm()) - original) < 2e-3


def test_hand_dataset_without_vertex_flip(tmp_path, mano_topology, caplog):
    from fastmetro.data.augment import hand_augment_config

    hand = label(0, joints=21)
    with TSVDatasetWriter(tmp_path, "hand", image_format="png") as writer:
        writer.add("h0", image(0), hand, vertices=np.asarray(mano_topology.template))
    with caplog.at_level("WARNING", logger="fastmetro.data"):
        body_settings = MeshDataset(tmp_path / "hand.yaml", mano_topology, train=True, augment=AugmentConfig())
    assert body_settings.augment.flip_prob == 0 and "flip disabled" in caplog.text
    dataset = MeshDataset(
        tmp_path / "hand.yaml", mano_topology, train=True, augment=hand_augment_config(), image_size=SIZE
    )
    sample = dataset[0]
    assert sample["joints_3d"].shape == (21, 4) and sample["vertices"].shape == (778, 3)
    assert sample["joints_3d"][0, :3].abs().max() < 1e-6  # centred on the wrist


def test_hand_ground_truth_from_a_mano_file_is_centred_on_the_kinematic_wrist(tmp_path, topology, body_model):
    """Released hands: the ground-truth mesh is centred on MANO's kinematic wrist joint (the
    layer's joint 0), not on a point regressed from the mesh; also after an in-plane rotation."""
    import dataclasses

    from fastmetro.data.augment import hand_augment_config

    yaml_path, _, pose = _mixed_shard(tmp_path)
    hand = dataclasses.replace(topology, kind="hand", vertex_flip=None)
    output = body_model(torch.tensor(pose[None], dtype=torch.float32), torch.linspace(-1, 1, 10)[None])
    vertices, wrist = output.vertices[0].numpy(), output.joints[0, 0].numpy()
    assert np.linalg.norm(wrist - vertices.mean(0)) > 0.01  # the two roots differ here
    sample = MeshDataset(yaml_path, hand, train=False, image_size=SIZE, body_model=body_model)[2]
    np.testing.assert_allclose(sample["vertices"].numpy(), vertices - wrist, atol=1e-5)
    rotated = MeshDataset(
        yaml_path,
        hand,
        train=True,
        augment=hand_augment_config(rotation_zero_prob=0.0),
        image_size=SIZE,
        body_model=body_model,
    )[2]["vertices"].numpy()
    # A rotation about the camera axis keeps distances to the (rotated) wrist.
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=1), np.linalg.norm(vertices - wrist, axis=1), atol=1e-5)
    assert np.abs(rotated - (vertices - wrist)).max() > 1e-3
