"""Backbones: local weights only, never a download; timm names map onto the released layout."""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from fastmetro import FastMetroError
from fastmetro.model import create_model
from fastmetro.model.backbone import build_backbone


def test_pretrained_without_cache_is_a_fast_clear_error(tmp_path, monkeypatch, smpl_topology):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(FastMetroError, match="resnet50.tv_in1k: ImageNet weights are not in the local cache") as error:
        create_model("FastMETRO-S-R50", topology=smpl_topology, pretrained=True)
    assert time.monotonic() - start < 30 and "\n" not in str(error.value)


def test_pretrained_uses_the_local_hub_cache(tmp_path, monkeypatch):
    # A cache laid out as huggingface_hub writes it: refs/main -> snapshots/<revision>/file.
    reference = build_backbone("resnet18")
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()
    repo = tmp_path / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # head is skipped
    save_file(state, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = build_backbone("resnet18", pretrained=True, pretrained_tag="tv_in1k")
    assert torch.equal(loaded.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_backbone_weights_from_a_torchvision_file(tmp_path, smpl_topology):
    import torchvision

    torchvision_model = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_model.state_dict(), path)  # torchvision names, with its fc head
    model = create_model("FastMETRO-S-R18", topology=smpl_topology, backbone_weights=path).eval()
    assert torch.equal(model.backbone.layer2[0].downsample[0].weight, torchvision_model.layer2[0].downsample[0].weight)
    torchvision_model.eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(torchvision_model.children())[:-2])(images)
        torch.testing.assert_close(model.backbone_features(images), expected)


def test_backbone_weights_mismatch_names_the_key(tmp_path, smpl_topology):
    import torchvision

    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(FastMetroError, match="resnet34.pth: backbone weights do not match .*unexpected key 'layer1.2"):
        create_model("FastMETRO-S-R18", topology=smpl_topology, backbone_weights=path)


def test_hrnet_w64_keeps_its_unused_classifier_and_gives_2048_channels():
    with torch.device("meta"):
        backbone = build_backbone("hrnet_w64", keep_classifier=True)
        features = backbone.forward_features(torch.empty(1, 3, 224, 224))
    assert features.shape == (1, 2048, 7, 7)
    assert backbone.classifier.weight.shape == (1000, 2048)
    assert sum(p.numel() for p in backbone.parameters()) == 128_059_944


def test_any_timm_backbone_by_override(smpl_topology):
    model = create_model("FastMETRO-S-R18", topology=smpl_topology, backbone="mobilenetv3_small_100").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 160, 160))
    assert out["fine_vertices"].shape == (1, 6890, 3)
    with pytest.raises(FastMetroError, match="unknown backbone 'not_a_net'"):
        create_model("FastMETRO-S-R18", topology=smpl_topology, backbone="not_a_net")
