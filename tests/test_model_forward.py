"""Forward behaviour: output shapes, mask semantics, gradients, positional encoding, input sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastmetro import FastMetroError
from fastmetro.model import create_model, mesh_attention_mask
from fastmetro.model.position_encoding import PositionEncodingSine


@pytest.fixture(scope="module")
def body_model(smpl_topology):
    torch.manual_seed(0)
    return create_model("FastMETRO-S-R18", topology=smpl_topology, flavor="release").eval()


@pytest.fixture(scope="module")
def hand_model(mano_topology):
    torch.manual_seed(0)
    return create_model("FastMETRO-S-R18", topology=mano_topology, flavor="paper").eval()


def test_body_output_shapes_and_keys(body_model):
    with torch.no_grad():
        out = body_model(torch.randn(2, 3, 224, 224))
    assert set(out) == {"camera", "joints", "coarse_vertices", "intermediate_vertices", "fine_vertices",
                        "vertices_by_level", "mesh_joints"}  # fmt: skip
    assert out["camera"].shape == (2, 3)
    assert out["joints"].shape == (2, 14, 3) and out["mesh_joints"].shape == (2, 14, 3)
    assert out["coarse_vertices"].shape == (2, 431, 3)
    assert out["intermediate_vertices"].shape == (2, 1723, 3)
    assert out["fine_vertices"].shape == (2, 6890, 3)
    assert [v.shape[1] for v in out["vertices_by_level"]] == [6890, 1723, 431]
    assert out["vertices_by_level"][0] is out["fine_vertices"]
    assert all(torch.isfinite(v).all() for v in (out["camera"], out["fine_vertices"]))


def test_hand_output_shapes(hand_model):
    with torch.no_grad():
        out = hand_model(torch.randn(1, 3, 224, 224), return_attention=True)
    assert "intermediate_vertices" not in out
    assert out["joints"].shape == (1, 21, 3) and out["mesh_joints"].shape == (1, 21, 3)
    assert out["coarse_vertices"].shape == (1, 195, 3) and out["fine_vertices"].shape == (1, 778, 3)
    assert len(out["vertices_by_level"]) == 2
    assert out["attention"]["self"][0].shape == (1, 8, 216, 216)
    assert out["attention"]["cross"][0].shape == (1, 8, 216, 49)


def test_release_body_upsampling_is_learnable_then_fixed(body_model, smpl_topology):
    with torch.no_grad():
        out = body_model(torch.randn(1, 3, 224, 224))
        layer = body_model.coarse2intermediate_upsample
        intermediate = layer.weight @ out["coarse_vertices"][0] + layer.bias[:, None]
    fine = smpl_topology.upsample[0] @ intermediate.double().numpy()
    np.testing.assert_allclose(out["intermediate_vertices"][0].numpy(), intermediate.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["fine_vertices"][0].numpy(), fine, rtol=1e-4, atol=1e-5)
    joints = smpl_topology.joint_regressor @ out["fine_vertices"][0].double().numpy()
    np.testing.assert_allclose(out["mesh_joints"][0].numpy(), joints, rtol=1e-4, atol=1e-5)


def test_paper_flavor_uses_fixed_matrices_for_every_level(smpl_topology):
    model = create_model("FastMETRO-S-R18", topology=smpl_topology).eval()
    assert not any(p.shape == (1723, 431) for p in model.parameters())
    coarse = torch.randn(2, 431, 3)
    levels = model.upsample(coarse)
    expected = smpl_topology.upsampling_matrix(2, 0) @ coarse[1].double().numpy()
    np.testing.assert_allclose(levels[0][1].numpy(), expected, rtol=1e-4, atol=1e-5)
    # Buffers never reach the state dict (keys equal the released names).
    assert not any("mask" in k or "upsample" in k or "regressor" == k for k in model.state_dict())


def test_non_square_and_non_224_inputs(body_model):
    with torch.no_grad():
        out = body_model(torch.randn(1, 3, 256, 192), return_attention=True)
    assert out["feature_size"] == (8, 6)
    assert out["attention"]["cross"][-1].shape == (1, 8, 445, 48)
    assert out["fine_vertices"].shape == (1, 6890, 3)


def test_bad_input_shape_is_a_clear_error(body_model):
    with pytest.raises(FastMetroError, match="expected a \\(B, 3, H, W\\)"):
        body_model(torch.randn(3, 224, 224))


def _adjacency_from_released_files(data_dir, stem):
    indices = torch.load(data_dir / f"{stem}_indices.pt", weights_only=True)
    values = torch.load(data_dir / f"{stem}_values.pt", weights_only=True)
    size = torch.load(data_dir / f"{stem}_size.pt", weights_only=True)
    return torch.sparse_coo_tensor(indices, values, tuple(size), check_invariants=True).to_dense()


@pytest.mark.parametrize("kind", ["smpl", "mano"])
def test_mask_matches_the_released_adjacency(kind, smpl_topology, mano_topology, smpl_dir, mano_dir):
    topology, data_dir, stem = {
        "smpl": (smpl_topology, smpl_dir, "smpl_431_adjmat"),
        "mano": (mano_topology, mano_dir, "mano_195_adjmat"),
    }[kind]
    released = _adjacency_from_released_files(data_dir, stem)  # row-normalised (A + I)
    num_joints = topology.num_joints
    mask = mesh_attention_mask(num_joints, topology.coarse_adjacency)
    size = num_joints + released.shape[0]
    assert mask.dtype == torch.bool and mask.shape == (size, size)
    assert not mask[:num_joints].any()  # joints attend to every token
    assert not mask[num_joints:, :num_joints].any()  # vertices attend to every joint
    assert torch.equal(mask[num_joints:, num_joints:], released == 0)  # self + 1-ring only
    assert not torch.diagonal(mask).any()
    # 4-11 allowed vertices per vertex row (body), as in the release.
    allowed = (~mask[num_joints:, num_joints:]).sum(1)
    assert allowed.min() >= 3 and allowed.max() <= 11


def test_masked_entries_get_zero_attention(body_model):
    with torch.no_grad():
        out = body_model(torch.randn(2, 3, 224, 224), return_attention=True)
    mask = body_model.attention_mask
    for weights in out["attention"]["self"]:
        assert weights.shape == (2, 8, 445, 445)
        assert weights[:, :, mask].abs().max() == 0
        assert weights[:, :, ~mask].min() > 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 8, 445))
    assert len(out["attention"]["self"]) == len(out["attention"]["cross"]) == 2  # S: 1 layer x 2 transformers


def test_attention_maps_come_from_the_same_forward(body_model):
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        plain = body_model(images)
        with_maps = body_model(images, return_attention=True)
    torch.testing.assert_close(plain["fine_vertices"], with_maps["fine_vertices"])


def test_half_head_mask_and_no_mask(smpl_topology):
    torch.manual_seed(1)
    model = create_model("FastMETRO-S-R18+half-head-mask", topology=smpl_topology).eval()
    assert model.attention_mask.shape == (8, 445, 445)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224), return_attention=True)
    mesh = mesh_attention_mask(14, smpl_topology.coarse_adjacency)
    weights = out["attention"]["self"][0]
    assert weights[:, :4][:, :, mesh].abs().max() == 0  # masked heads
    assert weights[:, 4:][:, :, mesh].min() > 0  # unmasked heads attend everywhere
    unmasked = create_model("FastMETRO-S-R18+no-mask", topology=smpl_topology).eval()
    assert unmasked.attention_mask is None
    with torch.no_grad():
        weights = unmasked(torch.randn(1, 3, 224, 224), return_attention=True)["attention"]["self"][0]
    assert weights.min() > 0


def _check_every_parameter_gets_gradient(model, images):
    # timm zero-initialises the last BatchNorm scale of each residual block, which blocks the
    # gradient of that branch until it moves; give them loaded-weights-like values.
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    model.train()
    out = model(images)
    generator = torch.Generator().manual_seed(0)
    loss = sum((out[key] * torch.randn(out[key].shape, generator=generator)).sum()
               for key in ("camera", "joints", "coarse_vertices", "fine_vertices", "mesh_joints"))  # fmt: skip
    loss.backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without, without


@pytest.mark.parametrize(
    "name, flavor",
    [("FastMETRO-S-R18", "release"), ("FastMETRO-M-R18", "paper"), ("FastMETRO-S-R18+graph-conv", "paper"),
     ("FastMETRO-S-R18+learnable-upsampling", "paper"), ("FastMETRO-S-R18+no-dim-reduction", "release")],
)  # fmt: skip
def test_gradients_reach_every_parameter(smpl_topology, name, flavor):
    torch.manual_seed(0)
    model = create_model(name, topology=smpl_topology, flavor=flavor)
    _check_every_parameter_gets_gradient(model, torch.randn(2, 3, 64, 64))


def test_gradients_reach_every_parameter_hand(mano_topology):
    model = create_model("FastMETRO-S-R18", topology=mano_topology, flavor="release")
    _check_every_parameter_gets_gradient(model, torch.randn(2, 3, 64, 64))


def test_graph_conv_ablation_leaves_joint_tokens_alone(smpl_topology):
    model = create_model("FastMETRO-S-R18+graph-conv", topology=smpl_topology).eval()
    layer = model.transformer_2.decoder.layers[0]
    graph = model.vertex_graph
    assert graph.shape == (431, 431) and torch.allclose(graph, graph.T)
    tokens = torch.randn(1, 445, 128)
    residual = layer.graph_block(tokens[:, 14:], graph)
    assert residual.shape == (1, 431, 128)
    # A vertex's graph update depends only on its 1-ring: perturbing a far vertex leaves it unchanged.
    adjacency = smpl_topology.coarse_adjacency.toarray()
    far = int(np.flatnonzero((adjacency[0] == 0) & (adjacency @ adjacency[0] == 0))[1])
    perturbed = tokens.clone()
    perturbed[:, 14 + far] += 1.0
    torch.testing.assert_close(layer.graph_block(perturbed[:, 14:], graph)[:, 0], residual[:, 0])


def test_position_encoding_against_formula():
    dim, height, width = 8, 3, 5
    pos = PositionEncodingSine(dim)(2, height, width)
    assert pos.shape == (2, dim, height, width)
    quarter = dim // 4
    for y in range(height):
        for x in range(width):
            y_norm = (y + 1) / (height + 1e-6) * 2 * math.pi
            x_norm = (x + 1) / (width + 1e-6) * 2 * math.pi
            for i in range(quarter):
                frequency = 10000 ** (2 * i / (dim // 2))
                # Channels: [pos_y (sin, cos interleaved), pos_x (sin, cos interleaved)].
                assert pos[0, 2 * i, y, x].item() == pytest.approx(math.sin(y_norm / frequency), abs=1e-5)
                assert pos[0, 2 * i + 1, y, x].item() == pytest.approx(math.cos(y_norm / frequency), abs=1e-5)
                assert pos[1, dim // 2 + 2 * i, y, x].item() == pytest.approx(math.sin(x_norm / frequency), abs=1e-5)
                assert pos[1, dim // 2 + 2 * i + 1, y, x].item() == pytest.approx(
                    math.cos(x_norm / frequency), abs=1e-5
                )


def test_transformer_weights_are_xavier_uniform(body_model):
    for name, parameter in body_model.transformer_1.named_parameters():
        if parameter.dim() > 1:
            fan_out, fan_in = parameter.shape[:2]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert parameter.abs().max() <= bound + 1e-6, name
            assert parameter.abs().max() > 0.9 * bound, name  # spans the Xavier range, not a smaller init
    attention = body_model.transformer_1.decoder.layers[0].self_attn
    assert attention.in_proj_weight.shape == (1536, 512)


def test_unknown_names_and_options_are_clear_errors(smpl_topology):
    with pytest.raises(FastMetroError, match="unknown model"):
        create_model("FastMETRO-XL-R50", topology=smpl_topology)
    with pytest.raises(FastMetroError, match="unknown FastMETRO config option"):
        create_model("FastMETRO-S-R18", topology=smpl_topology, num_layers=3)
    with pytest.raises(FastMetroError, match="attention_mask must be one of"):
        create_model("FastMETRO-S-R18", topology=smpl_topology, attention_mask="sometimes")
    with pytest.raises(FastMetroError, match="unknown flavor"):
        create_model("FastMETRO-S-R18", topology=smpl_topology, flavor="official")


@pytest.mark.slow  # builds the Anny topology on a fresh machine (cached afterwards)
def test_default_anny_topology():
    model = create_model("fastmetro-s-r18", topology="anny").eval()
    assert model.num_joints == 14 and len(model.level_vertex_counts) == 3
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out["fine_vertices"].shape == (1, model.level_vertex_counts[0], 3)
    assert out["intermediate_vertices"].shape == (1, model.level_vertex_counts[1], 3)
