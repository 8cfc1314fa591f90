"""The METRO-style baseline: METRO's published size, FastMETRO's outputs, trainable by the same engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastmetro
from fastmetro import FastMetroError
from fastmetro.engine.losses import MeshCriterion
from fastmetro.model.fastmetro import parameter_counts
from fastmetro.model.metro import (
    METRO_PUBLISHED_TRANSFORMER_PARAMS,
    METRO_UNUSED_BERT_PARAMS,
    metro_parameter_counts,
    reference_points,
)
from fastmetro.model.presets import build_on_meta, count_parameters, model_config, sized_topology
from train_helpers import TemplateDataset, tiny_config

# Narrow blocks (seconds on a CPU): METRO's structure, not its widths.
SMALL = {"hidden_dims": (64, 32, 16), "output_dims": (32, 16), "num_layers": 1, "intermediate_size": 64}


def test_encoder_size_is_metros_published_one():
    model = build_on_meta(model_config("METRO-R50"), sized_topology("body"))
    counts = metro_parameter_counts(model)
    # METRO's EXP.md: transformer 102,256,646 = our three blocks + the BERT parts METRO never uses.
    assert counts["encoder_params"] == 57_328_902
    assert counts["encoder_params"] + METRO_UNUSED_BERT_PARAMS == METRO_PUBLISHED_TRANSFORMER_PARAMS
    assert counts["backbone_params"] == 23_508_032
    assert counts["upsampling_params"] == 431 * 1723 + 1723 + 1723 * 6890 + 6890  # METRO's two Linear layers
    assert counts["camera_params"] == 4 + 431 * 250 + 250 + 250 * 3 + 3
    parts = counts["encoder_params"] + counts["upsampling_params"] + counts["camera_params"]
    assert counts["transformer_params"] == parts
    h64 = count_parameters("METRO-H64", task="body")
    assert h64["backbone_params"] == 128_059_944  # METRO's logged HRNet-W64
    assert count_parameters("FastMETRO-S-R50")["transformer_params"] * 6 < counts["encoder_params"]


def test_blocks_follow_metros_configuration():
    model = build_on_meta(model_config("METRO-R50"), sized_topology("body"))
    widths = [(b.img_embedding.in_features, b.img_embedding.out_features, b.cls_head.out_features)
              for b in model.blocks]  # fmt: skip
    assert widths == [(2051, 1024, 512), (512, 256, 128), (128, 128, 3)]
    layer = model.blocks[0].encoder.layers[0]
    assert len(model.blocks[0].encoder.layers) == 4 and layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 3072 and not layer.norm_first
    assert model.blocks[0].position_embeddings.num_embeddings == 445


@pytest.mark.parametrize("task", ["body", "hand"])
def test_outputs_match_fastmetros(task, smpl_topology, mano_topology):
    topology = smpl_topology if task == "body" else mano_topology
    torch.manual_seed(0)
    metro = fastmetro.create_model("METRO-R18", topology=topology, **SMALL).eval()
    reference = fastmetro.create_model("FastMETRO-S-R18", topology=topology).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = metro(images), reference(images)
    assert set(out) == set(expected)
    for key in out:
        if isinstance(out[key], torch.Tensor):
            assert out[key].shape == expected[key].shape, key
    assert [v.shape for v in out["vertices_by_level"]] == [v.shape for v in expected["vertices_by_level"]]
    regressor = torch.tensor(topology.joint_regressor, dtype=torch.float32)
    torch.testing.assert_close(out["mesh_joints"], torch.einsum("kv,bvc->bkc", regressor, out["fine_vertices"]))
    with pytest.raises(FastMetroError, match="attention maps"):
        metro(images, return_attention=True)


def test_reference_points_are_the_root_centred_template(smpl_topology):
    points = reference_points(smpl_topology)
    template = np.asarray(smpl_topology.template)
    root = smpl_topology.root_regressor @ template
    np.testing.assert_allclose(points[:14], smpl_topology.joint_regressor @ template - root, atol=1e-6)
    np.testing.assert_allclose(points[14:], smpl_topology.downsample(template, 2) - root, atol=1e-6)
    assert not reference_points(sized_topology("body")).any()  # no template: zeros (documented fallback)


def test_every_parameter_trains_with_the_mesh_criterion(smpl_topology):
    torch.manual_seed(1)
    model = fastmetro.create_model("METRO-R18", topology=smpl_topology, **SMALL).train()
    batch = torch.utils.data.default_collate([TemplateDataset(smpl_topology, size=2)[i] for i in range(2)])
    terms = MeshCriterion(smpl_topology)(model(batch["image"]), batch)
    terms["total"].backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # timm zero-initialises each ResNet block's last BatchNorm scale, which blocks that branch's gradient.
    assert all(name.startswith("backbone.") for name in without), without


def test_checkpoint_round_trip(tmp_path, mano_topology):
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(2)
    model = fastmetro.create_model("METRO-R18", topology=mano_topology, **SMALL).eval()
    save_checkpoint(model, tmp_path / "metro.safetensors")
    loaded = fastmetro.create_model(topology=mano_topology, checkpoint=tmp_path / "metro.safetensors").eval()
    assert type(loaded).__name__ == "METRO" and loaded.config == model.config
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["fine_vertices"], model(images)["fine_vertices"])


@pytest.mark.slow  # writes ~400 MB of checkpoints (METRO's 1723 -> 6890 Linear and its optimiser state)
def test_trainer_trains_and_checkpoints_metro(tmp_path, smpl_topology):
    from fastmetro.engine.train import Trainer

    config = tiny_config(tmp_path / "run", steps=6, batch_size=2, extra=[
        "model.name=METRO-R18",
        f"model.overrides={ {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()} }",
        "optim.lr=1e-3", "train.log_every=3",
    ])  # fmt: skip
    data = TemplateDataset(smpl_topology, size=8)
    trainer = Trainer(config, topology=smpl_topology, train_dataset=data, val_dataset=None)
    losses = []
    original = trainer.train_step
    trainer.train_step = lambda batch: losses.append(float((terms := original(batch))["total"])) or terms
    trainer.fit()
    assert sum(losses[-2:]) < sum(losses[:2])
    loaded = fastmetro.create_model(topology=smpl_topology, checkpoint=tmp_path / "run" / "last.safetensors").eval()
    assert type(loaded).__name__ == "METRO" and loaded.spec.name == "METRO-R18"
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["fine_vertices"], trainer.model.eval()(images)["fine_vertices"])


def test_names_and_listing():
    from fastmetro.model.commands import model_rows

    assert fastmetro.model.presets.canonical_name("metro-r50") == "METRO-R50"
    with pytest.raises(FastMetroError, match="unknown model"):
        model_config("METRO-X9")
    with pytest.raises(FastMetroError, match="unknown METRO config option"):
        model_config("METRO-R50", num_blocks=2)
    rows = [r for r in model_rows(tasks=("hand",), ablations=False) if r["name"].startswith("METRO")]
    expected = {"METRO-R18", "METRO-R34", "METRO-R50", "METRO-H64", "METRO-BPL", "METRO-BPF", "METRO-BPH"}
    assert {r["name"] for r in rows} == expected  # one METRO baseline per backbone
    assert parameter_counts(build_on_meta(model_config("METRO-R50"), sized_topology("hand")))["backbone_params"] == (
        23_508_032
    )
