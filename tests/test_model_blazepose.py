"""FastMETRO on BlazePose's landmark encoder (FastMETRO-S-BPF): the cut network, the preset, the
frozen-backbone training options and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch

from fastmetro.conventions import IMAGENET_MEAN, IMAGENET_STD
from fastmetro.engine import cached_head
from fastmetro.engine.config import load_config
from fastmetro.engine.train import Trainer
from fastmetro.errors import FastMetroError
from fastmetro.mediapipe.assets import asset_path
from fastmetro.mediapipe.graph import TFLiteNet
from fastmetro.model.blazepose_backbone import BlazePoseBackbone
from fastmetro.model.factory import create_model
from fastmetro.model.presets import count_parameters
from train_helpers import TINY_MODEL_OVERRIDES, TemplateDataset, tiny_config


def _images() -> torch.Tensor:
    """(2, 3, 256, 256) ImageNet-normalised: the astronaut and seeded noise."""
    photo = skimage.transform.resize(skimage.data.astronaut(), (256, 256), anti_aliasing=True)
    noise = np.random.default_rng(0).uniform(0, 1, (256, 256, 3))
    unit = torch.from_numpy(np.stack([photo, noise])).float().permute(0, 3, 1, 2)
    return (unit - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def backbone():
    return BlazePoseBackbone("full").eval()


def test_backbone_is_the_landmark_networks_map_before_its_head(backbone):
    net = TFLiteNet.from_file(asset_path("pose_landmark_full"))
    images = _images()
    unit = images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        _, reference = net(unit.permute(0, 2, 3, 1).contiguous(), features=(backbone.feature_name,))
        features = backbone.forward_features(images)
    assert features.shape == (2, 288, 8, 8) and backbone.num_features == 288
    assert torch.allclose(features, reference[backbone.feature_name], atol=1e-4)
    assert features.abs().max() > 0.5  # a live map, not zeros
    # The cut keeps only what the map needs: the regression head and decoders are gone.
    kept = sum(p.numel() for p in backbone.parameters())
    assert 1_500_000 < kept < 0.7 * sum(p.numel() for p in net.parameters())


def test_wrong_input_size_is_a_one_line_error(backbone):
    with pytest.raises(FastMetroError, match=r"expected images \(B, 3, 256, 256\)"):
        backbone.forward_features(torch.zeros(1, 3, 224, 224))


def test_bpf_preset_counts_and_runs_from_features():
    counts = count_parameters("FastMETRO-S-BPF", **TINY_MODEL_OVERRIDES)
    assert counts["backbone_params"] == 1_798_952  # the cut landmark network of pose_landmark_full
    model = create_model("FastMETRO-S-BPF", topology="anny", image_size=256, **TINY_MODEL_OVERRIDES).eval()
    images = _images()
    with torch.no_grad():
        whole = model(images)
        split = model.forward_from_features(model.backbone_features(images))
    assert whole["fine_vertices"].shape == (2, 13348, 3)
    assert torch.equal(whole["fine_vertices"], split["fine_vertices"])
    assert torch.equal(whole["camera"], split["camera"])


def _bpf_config(path, extra=()):
    return tiny_config(
        path,
        steps=3,
        batch_size=2,
        extra=["model.name=FastMETRO-S-BPF", "data.image_size=256", "optim.lr=1e-3", *extra],
    )


def test_frozen_backbone_on_cached_features_trains_only_the_head(tmp_path, smpl_topology, monkeypatch):
    data = TemplateDataset(smpl_topology, size=4, image_size=256)
    config = _bpf_config(tmp_path / "run", ["optim.backbone_lr_scale=0", "data.cached_feature_passes=1"])
    trainer = Trainer(config, topology=smpl_topology, train_dataset=data, val_dataset=None)
    cache = tmp_path / "run" / "feature_cache" / "pass_00.safetensors"
    assert cache.is_file()
    # The cache holds the backbone's maps of these crops (float16) and their labels.
    with torch.no_grad():
        expected = trainer.model.backbone_features(torch.stack([data[i]["image"] for i in range(4)]))
    cached = trainer.train_dataset.tensors
    assert torch.allclose(cached["features"].float(), expected, atol=2e-3 * float(expected.abs().max()))
    assert torch.allclose(cached["joints_3d"], torch.stack([data[i]["joints_3d"] for i in range(4)]))
    backbone_before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    head_before = trainer.model.xyz_regressor.weight.detach().clone()
    trainer.fit()
    assert all(torch.equal(v, backbone_before[k]) for k, v in trainer.model.backbone.state_dict().items())
    assert not torch.equal(trainer.model.xyz_regressor.weight, head_before)
    # A rerun reads the cache back instead of running the backbone again.
    monkeypatch.setattr(cached_head, "compute_pass", lambda *a, **k: pytest.fail("recomputed a cached pass"))
    again = Trainer(config, topology=smpl_topology, train_dataset=data, val_dataset=None)
    assert torch.equal(again.train_dataset.tensors["features"], cached["features"])


def test_backbone_at_a_lower_rate(tmp_path, smpl_topology):
    data = TemplateDataset(smpl_topology, size=4, image_size=256)
    trainer = Trainer(
        _bpf_config(tmp_path / "run", ["optim.backbone_lr_scale=0.1"]),
        topology=smpl_topology,
        train_dataset=data,
        val_dataset=None,
    )
    head, encoder = trainer.optimizer.param_groups
    assert encoder["lr"] == pytest.approx(0.1 * head["lr"])
    assert {id(p) for p in encoder["params"]} == {id(p) for p in trainer.model.backbone.parameters()}


def test_cached_features_need_a_frozen_backbone(tmp_path):
    with pytest.raises(FastMetroError, match="needs a frozen backbone"):
        load_config(None, [f"train.output_dir={tmp_path}", "data.cached_feature_passes=2"])


def test_fast_path_equals_plain_on_the_blazepose_backbone():
    from fastmetro.model.fast import prepare_for_inference

    torch.manual_seed(0)
    model = create_model("FastMETRO-S-BPF", topology="anny", image_size=256, **TINY_MODEL_OVERRIDES).eval()
    images = _images()
    with torch.no_grad():
        plain = model(images)
        fast = prepare_for_inference(model)(images)
    for key in ("camera", "joints", "fine_vertices"):
        assert torch.allclose(fast[key], plain[key], atol=1e-4), key
