"""Official checkpoints: strict conversion of the released layouts, function equivalence with an
independent sequence-first reference forward, malformed files, and our safetensors format."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from fastmetro import FastMetroError
from fastmetro.model import create_model
from fastmetro.model.checkpoint import convert_official, fastmetro_to_official, read_checkpoint, save_checkpoint
from fastmetro.model.presets import build_on_meta, model_config, sized_topology


def official_entries(reference_dir, which):
    entries = []
    for line in (reference_dir / f"official_state_dict_keys_{which}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype, _ = line.split("\t")
        entries.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return entries


def random_official_state_dict(entries, seed=0):
    """Exactly the released keys, shapes and dtypes, with random well-scaled values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in entries:
        if dtype == "int64":
            state[key] = torch.randint(0, 1000, shape, generator=generator, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # norm scales
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return state


@pytest.fixture(scope="module")
def official_s_r50(reference_dir, tmp_path_factory):
    entries = official_entries(reference_dir, "S-R50")
    state = random_official_state_dict(entries)
    path = tmp_path_factory.mktemp("official") / "FastMETRO-S-R50_h36m_state_dict.bin"
    torch.save(state, path)
    return path, state, entries


@pytest.fixture(scope="module")
def converted_s_r50(official_s_r50, tmp_path_factory):
    path, _, _ = official_s_r50
    target = tmp_path_factory.mktemp("converted") / "s_r50.safetensors"
    spec = convert_official(path, target, "fastmetro-s-r50")
    return target, spec


def test_convert_s_r50_and_load_strictly(official_s_r50, converted_s_r50, smpl_topology):
    _, state, entries = official_s_r50
    target, spec = converted_s_r50
    assert spec.name == "FastMETRO-S-R50" and spec.flavor == "release" and spec.task == "body"
    assert spec.topology.name == "smpl" and spec.version == 2
    assert target.with_suffix(".json").is_file()
    model = create_model(checkpoint=target, topology=smpl_topology)
    ours = model.state_dict()
    official_back = fastmetro_to_official(ours)
    assert list(official_back) == [key for key, _, _ in entries]  # same keys, same order
    for key, value in state.items():
        assert torch.equal(official_back[key], value), key


def _assert_forward_uses_every_tensor(model, image_size, unused_by_design=()):
    """Every parameter gets a gradient (train mode); every module holding buffers runs (eval).

    ``unused_by_design``: parameters the released network also never uses (HRNet's classifier).
    """
    model.train()
    out = model(torch.randn(2, 3, image_size, image_size))
    generator = torch.Generator().manual_seed(0)
    loss = sum((out[k] * torch.randn(out[k].shape, generator=generator)).sum()
               for k in ("camera", "joints", "coarse_vertices", "fine_vertices"))  # fmt: skip
    loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == list(unused_by_design), unused[:5]
    model.eval()
    called = set()
    # Modules holding state-dict buffers (BatchNorm running statistics).
    owners = {name for name, module in model.named_modules()
              if set(module._buffers) - module._non_persistent_buffers_set}  # fmt: skip
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: called.add(name))
             for name, module in model.named_modules() if name in owners]  # fmt: skip
    with torch.no_grad():
        model(torch.randn(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    assert owners and owners <= called, sorted(owners - called)[:5]


def test_converted_s_r50_forward_uses_every_tensor(converted_s_r50, smpl_topology):
    target, _ = converted_s_r50
    model = create_model(checkpoint=target, topology=smpl_topology)
    _assert_forward_uses_every_tensor(model, 64)


def test_official_bin_loads_directly(official_s_r50, smpl_topology):
    path, state, _ = official_s_r50
    model = create_model("FastMETRO-S-R50", topology=smpl_topology, checkpoint=path)
    assert model.spec.flavor == "release"  # inferred from dim_reduce_enc_cam / dim_reduce_enc_img
    assert model.spec.name == "FastMETRO-S-R50"
    assert torch.equal(model.backbone.layer3[2].conv2.weight, state["backbone.6.2.conv2.weight"])
    assert torch.equal(model.coarse2intermediate_upsample.weight, state["coarse2intermediate_upsample.weight"])


# --------------------------------------------------------------------------- reference forward
def _layer_norm(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], 1e-5)


def _attention(query, key, value, state, prefix, mask=None):
    """Sequence-first multi-head attention with the packed official weights."""
    dim = query.shape[-1]
    return F.multi_head_attention_forward(
        query, key, value, dim, 8,
        state[prefix + ".in_proj_weight"], state[prefix + ".in_proj_bias"], None, None, False, 0.0,
        state[prefix + ".out_proj.weight"], state[prefix + ".out_proj.bias"],
        training=False, need_weights=False, attn_mask=mask,
    )[0]  # fmt: skip


def _ffn(x, state, prefix):
    hidden = F.relu(F.linear(x, state[prefix + ".linear1.weight"], state[prefix + ".linear1.bias"]))
    return F.linear(hidden, state[prefix + ".linear2.weight"], state[prefix + ".linear2.bias"])


def _reference_sine(dim, height, width):
    """(height * width, dim): [pos_y, pos_x], each interleaving sin/cos, coordinates in (0, 2*pi]."""
    half = dim // 2
    ys = torch.arange(1, height + 1, dtype=torch.float64) / (height + 1e-6) * 2 * math.pi
    xs = torch.arange(1, width + 1, dtype=torch.float64) / (width + 1e-6) * 2 * math.pi
    codes = torch.zeros(height, width, dim, dtype=torch.float64)
    for channel in range(half):
        frequency = 10000 ** (2 * (channel // 2) / half)
        wave = torch.sin if channel % 2 == 0 else torch.cos
        codes[:, :, channel] = wave(ys / frequency)[:, None]
        codes[:, :, half + channel] = wave(xs / frequency)[None, :]
    return codes.reshape(height * width, dim).float()


def _reference_transformer(state, prefix, layers, image, camera, queries, pos, mask):
    """Sequence-first pre-norm transformer as released: image (HW, B, D), camera (1, B, D)."""
    src = torch.cat([camera, image])
    src_pos = torch.cat([torch.zeros_like(camera), pos])
    for i in range(layers):
        p = f"{prefix}.encoder.layers.{i}"
        normed = _layer_norm(src, state, p + ".norm1")
        src = src + _attention(normed + src_pos, normed + src_pos, normed, state, p + ".self_attn")
        src = src + _ffn(_layer_norm(src, state, p + ".norm2"), state, p)
    memory = _layer_norm(src, state, f"{prefix}.encoder.norm")
    camera_feature, image_memory = memory[:1], memory[1:]
    tgt = queries
    for i in range(layers):
        p = f"{prefix}.decoder.layers.{i}"
        normed = _layer_norm(tgt, state, p + ".norm1")
        tgt = tgt + _attention(normed, normed, normed, state, p + ".self_attn", mask)
        normed = _layer_norm(tgt, state, p + ".norm2")
        tgt = tgt + _attention(normed, image_memory + pos, image_memory, state, p + ".multihead_attn")
        tgt = tgt + _ffn(_layer_norm(tgt, state, p + ".norm3"), state, p)
    return camera_feature, image_memory, _layer_norm(tgt, state, f"{prefix}.decoder.norm")


def reference_forward(state, images, topology, released_adjacency, layers=1):
    """The released network written out from the official state dict (torchvision backbone)."""
    import torchvision

    resnet = torchvision.models.resnet50()
    backbone = torch.nn.Sequential(*list(resnet.children())[:-2]).eval()
    backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    batch = images.shape[0]
    features = F.conv2d(backbone(images), state["conv_1x1.weight"], state["conv_1x1.bias"])
    height, width = features.shape[-2:]
    image = features.flatten(2).permute(2, 0, 1)  # (HW, B, 512)
    num_joints = state["joint_token_embed.weight"].shape[0]
    num_tokens = num_joints + released_adjacency.shape[0]
    mask = torch.zeros(num_tokens, num_tokens, dtype=torch.bool)
    mask[num_joints:, num_joints:] = released_adjacency == 0
    pos_1 = _reference_sine(512, height, width)[:, None].expand(-1, batch, -1)
    pos_2 = _reference_sine(128, height, width)[:, None].expand(-1, batch, -1)
    camera = state["cam_token_embed.weight"][:, None].expand(-1, batch, -1)
    queries = torch.cat([state["joint_token_embed.weight"], state["vertex_token_embed.weight"]])
    queries = queries[:, None].expand(-1, batch, -1)
    cam_1, image_1, tokens_1 = _reference_transformer(
        state, "transformer_1", layers, image, camera, queries, pos_1, mask
    )
    linear = lambda x, name: F.linear(x, state[name + ".weight"], state[name + ".bias"])  # noqa: E731
    cam_2, _, tokens_2 = _reference_transformer(
        state, "transformer_2", layers, linear(image_1, "dim_reduce_enc_img"), linear(cam_1, "dim_reduce_enc_cam"),
        linear(tokens_1, "dim_reduce_dec"), pos_2, mask,
    )  # fmt: skip
    camera_params = linear(cam_2, "cam_predictor").reshape(batch, 3)
    coordinates = linear(tokens_2, "xyz_regressor").transpose(0, 1)
    joints, coarse = coordinates[:, :num_joints], coordinates[:, num_joints:]
    intermediate = linear(coarse.transpose(1, 2), "coarse2intermediate_upsample").transpose(1, 2)
    upsample = torch.from_numpy(topology.upsample[0].toarray()).float()
    fine = torch.einsum("fi,bic->bfc", upsample, intermediate)
    return {"camera": camera_params, "joints": joints, "coarse_vertices": coarse,
            "intermediate_vertices": intermediate, "fine_vertices": fine}  # fmt: skip


def test_converted_model_computes_the_released_function(official_s_r50, converted_s_r50, smpl_topology, smpl_dir):
    _, state, _ = official_s_r50
    target, _ = converted_s_r50
    model = create_model(checkpoint=target, topology=smpl_topology).eval()
    indices = torch.load(smpl_dir / "smpl_431_adjmat_indices.pt", weights_only=True)
    values = torch.load(smpl_dir / "smpl_431_adjmat_values.pt", weights_only=True)
    adjacency = torch.sparse_coo_tensor(indices, values, (431, 431), check_invariants=True).to_dense()
    torch.manual_seed(3)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference_forward(state, images, smpl_topology, adjacency)
        ours = model(images)
    for key, value in expected.items():
        scale = value.abs().max()
        assert scale > 0
        torch.testing.assert_close(ours[key] / scale, value / scale, atol=2e-5, rtol=1e-4, msg=key)


# --------------------------------------------------------------------------- L-H64 layouts
@pytest.mark.parametrize("which, hand", [("L-H64", False), ("L-H64_hand", True)])
def test_l_h64_layouts_match_exactly(reference_dir, which, hand):
    """Key-by-key and shape-by-shape, without allocating (meta device)."""
    model = build_on_meta(model_config("FastMETRO-L-H64", "release"), sized_topology("hand" if hand else "body"))
    ours = {key: (tuple(value.shape), str(value.dtype).removeprefix("torch."))
            for key, value in fastmetro_to_official(model.state_dict()).items()}  # fmt: skip
    official = {key: (shape, dtype) for key, shape, dtype in official_entries(reference_dir, which)}
    assert list(ours) == list(official)
    assert ours == official


@pytest.mark.slow
@pytest.mark.parametrize("which, hand", [("L-H64", False), ("L-H64_hand", True)])
def test_convert_l_h64_and_use_every_tensor(reference_dir, tmp_path, which, hand, request):
    entries = official_entries(reference_dir, which)
    state = random_official_state_dict(entries)
    source = tmp_path / f"FastMETRO-{which}_state_dict.bin"
    torch.save(state, source)
    target = tmp_path / "converted.safetensors"
    spec = convert_official(source, target, "FastMETRO-L-H64", hand=hand)
    assert spec.task == ("hand" if hand else "body")
    topology = request.getfixturevalue("mano_topology" if hand else "smpl_topology")
    model = create_model(checkpoint=target, topology=topology)
    for key, value in fastmetro_to_official(model.state_dict()).items():
        assert torch.equal(value, state[key]), key
    del state
    # The released HRNet-W64 keeps a classifier its forward never calls.
    _assert_forward_uses_every_tensor(model, 64, ("backbone.classifier.weight", "backbone.classifier.bias"))


# --------------------------------------------------------------------------- malformed files
def _save(path, state):
    torch.save(state, path)
    return path


def test_malformed_checkpoints_name_file_and_key(official_s_r50, tmp_path):
    path, state, _ = official_s_r50
    cases = {
        "missing": (
            {k: v for k, v in state.items() if k != "dim_reduce_dec.bias"},
            "missing key 'dim_reduce_dec.bias'",
        ),
        "extra": ({**state, "extra_head.weight": torch.zeros(3)}, "unexpected key 'extra_head.weight'"),
        # A partial SMPL parameter regressor: recognised by its keys, then incomplete.
        "partial": ({**state, "smpl_parameter_regressor.regressor.3.weight": torch.zeros(226, 1024)},
                    "missing key 'smpl_parameter_regressor.regressor.0.fc_block.0.weight'"),
        "shape": ({**state, "vertex_token_embed.weight": torch.zeros(430, 512)},
                  "key 'vertex_token_embed.weight' has shape \\(430, 512\\)"),
    }  # fmt: skip
    for case, (broken, message) in cases.items():
        source = _save(tmp_path / f"{case}.bin", broken)
        with pytest.raises(FastMetroError, match=message) as error:
            convert_official(source, tmp_path / f"{case}.safetensors", "FastMETRO-S-R50")
        assert str(source) in str(error.value) and "\n" not in str(error.value)
        assert not (tmp_path / f"{case}.safetensors").exists()


def test_wrong_task_is_explained(official_s_r50, tmp_path):
    path, _, _ = official_s_r50
    with pytest.raises(FastMetroError, match="14 joint tokens, a hand model has 21"):
        convert_official(path, tmp_path / "x.safetensors", "FastMETRO-S-R50", hand=True)


def test_not_a_state_dict_and_corrupt_files(tmp_path, smpl_topology):
    not_dict = _save(tmp_path / "list.bin", [torch.zeros(2)])
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive" * 10)
    truncated_st = tmp_path / "bad.safetensors"
    truncated_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases = (
        (not_dict, "does not hold a state dict"),
        (corrupt, "not a readable weights-only torch file"),
        (truncated_st, "not a readable safetensors file"),
        (tmp_path / "absent.bin", "not found"),
    )
    for path, message in cases:
        with pytest.raises(FastMetroError, match=message) as error:
            create_model("FastMETRO-S-R18", topology=smpl_topology, checkpoint=path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil_state_dict.bin"
    torch.save({"x": _Exploit()}, path, pickle_module=pickle)
    with pytest.raises(FastMetroError, match="evil_state_dict.bin: not a readable weights-only torch file"):
        read_checkpoint(path)


# --------------------------------------------------------------------------- our format
def test_save_and_reload_our_format(tmp_path, smpl_topology, mano_topology):
    torch.manual_seed(0)
    model = create_model("FastMETRO-S-R18+graph-conv", topology=smpl_topology, flavor="release", dropout=0.0).eval()
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["name"] == "FastMETRO-S-R18+graph-conv" and config["overrides"] == {"dropout": 0.0}
    assert config["version"] == 2 and config["input"]["image_size"] == 224
    assert config["topology"] == {
        "name": "smpl",
        "kind": "body",
        "level_vertex_counts": [6890, 1723, 431],
        "num_joints": 14,
    }
    reloaded = create_model(checkpoint=path, topology=smpl_topology).eval()
    assert reloaded.config == model.config and reloaded.spec == model.spec
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images)["fine_vertices"], model(images)["fine_vertices"])
    with pytest.raises(FastMetroError, match="holds the 'release' flavor"):
        create_model(checkpoint=path, topology=smpl_topology, flavor="paper")
    with pytest.raises(FastMetroError, match="does not fit topology 'mano'"):
        create_model(checkpoint=path, topology=mano_topology)


def test_convert_command(official_s_r50, tmp_path, capsys):
    from fastmetro.cli import main

    path, state, _ = official_s_r50
    target = tmp_path / "out.safetensors"
    assert main(["convert", str(path), str(target), "--model", "FastMETRO-S-R50"]) == 0
    assert "release flavor" in capsys.readouterr().out
    loaded = read_checkpoint(target)
    assert torch.equal(loaded.state_dict["backbone.conv1.weight"], state["backbone.0.weight"])
    assert main(["convert", str(path), str(tmp_path / "h.safetensors"), "--model", "FastMETRO-S-R50", "--hand"]) == 2
    assert "error:" in capsys.readouterr().err
