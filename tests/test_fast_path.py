"""The fast inference path computes the plain forward's function (fp32, max |diff| <= 1e-4 on every output)."""

from __future__ import annotations

import pytest
import torch

from fastmetro import FastMetroError
from fastmetro.model import create_model
from fastmetro.model.fast import CSRUpsampling, inference_view, prepare_for_inference
from fastmetro.model.fastmetro import SparseUpsampling

TOLERANCE = 1e-4


def realistic(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter and BatchNorm statistic (random init leaves zero BN scales and
    identity statistics, which would hide mistakes in the folded backbone)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model.eval()


def max_difference(plain, fast, path="out") -> float:
    """Max |plain - fast| over every tensor of two outputs; keys, lengths and shapes must match."""
    if isinstance(plain, dict):
        assert set(plain) == set(fast), (path, set(plain) ^ set(fast))
        return max(max_difference(plain[k], fast[k], f"{path}.{k}") for k in plain)
    if isinstance(plain, (list, tuple)):
        assert len(plain) == len(fast), path
        return max((max_difference(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(plain, fast))), default=0.0)
    if isinstance(plain, torch.Tensor):
        assert plain.shape == fast.shape and plain.dtype == fast.dtype, (path, plain.shape, fast.shape)
        return float((plain - fast).abs().max()) if plain.numel() else 0.0
    assert plain == fast, path
    return 0.0


def check_equal(model, images, attention: bool, fast=None):
    fast = prepare_for_inference(model) if fast is None else fast
    with torch.no_grad():
        expected = model(images, return_attention=attention)
        first = fast(images, return_attention=attention)
        second = fast(images, return_attention=attention)  # from the caches
    scale = float(expected["fine_vertices"].abs().max())
    assert scale > 1e-2, "degenerate outputs would make the comparison meaningless"
    assert max_difference(expected, first) <= TOLERANCE
    assert max_difference(expected, second) <= TOLERANCE
    return fast


_MODELS = {}


def model_for(name, flavor, topology, seed=0):
    key = (name, flavor, topology.name)
    if key not in _MODELS:
        torch.manual_seed(seed)
        _MODELS[key] = realistic(create_model(name, topology=topology, flavor=flavor), seed)
    return _MODELS[key]


@pytest.mark.parametrize("variant", ["S", "M", "L"])
@pytest.mark.parametrize("task", ["body", "hand"])
def test_fast_equals_plain(variant, task, smpl_topology, mano_topology):
    topology, flavor = (smpl_topology, "release") if task == "body" else (mano_topology, "paper")
    model = model_for(f"FastMETRO-{variant}-R18", flavor, topology)
    generator = torch.Generator().manual_seed(1)
    fast = None
    for batch, attention in ((1, False), (3, True)):
        images = torch.randn(batch, 3, 64, 64, generator=generator)
        fast = check_equal(model, images, attention, fast)


@pytest.mark.parametrize(
    "name", ["+half-head-mask", "+no-mask", "+graph-conv", "+learnable-upsampling", "+no-dim-reduction"]
)
def test_fast_equals_plain_for_ablations(name, smpl_topology):
    model = model_for(f"FastMETRO-S-R18{name}", "paper", smpl_topology)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fast = check_equal(model, images, attention=True)
    check_equal(model, images, attention=False, fast=fast)


def test_fast_paper_flavor_body_and_other_input_sizes(smpl_topology):
    model = model_for("FastMETRO-S-R18", "paper", smpl_topology)
    fast = prepare_for_inference(model)
    generator = torch.Generator().manual_seed(3)
    for size in ((64, 64), (96, 64), (64, 64)):  # caches per input size, then back
        check_equal(model, torch.randn(2, 3, *size, generator=generator), attention=False, fast=fast)


def test_view_shares_weights_and_names(smpl_topology):
    model = model_for("FastMETRO-S-R18", "release", smpl_topology)
    fast = prepare_for_inference(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    plain_parameters = dict(model.named_parameters())
    assert all(p is plain_parameters[name] for name, p in fast.named_parameters())
    assert type(model.transformer_1).__name__ == "Transformer"  # the viewed model is unchanged
    assert isinstance(fast, type(model)) and fast.topology is model.topology
    assert inference_view(fast) is fast and inference_view(model) is not model


def test_caches_follow_weight_changes(smpl_topology):
    torch.manual_seed(4)
    model = realistic(create_model("FastMETRO-S-R18", topology=smpl_topology, flavor="release"), 4)
    fast = prepare_for_inference(model)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    check_equal(model, images, attention=False, fast=fast)
    with torch.no_grad():  # in-place updates, as an optimiser step or load_state_dict makes them
        model.transformer_1.decoder.layers[0].self_attn.in_proj_weight.mul_(1.5)
        model.vertex_token_embed.weight.add_(0.3)
        model.backbone.bn1.running_mean.add_(0.5)  # the folded backbone copy must follow
        model.transformer_1.encoder.layers[0].self_attn.in_proj_weight.mul_(0.7)  # cached pos projections
    check_equal(model, images, attention=True, fast=fast)
    model.load_state_dict(realistic(create_model("FastMETRO-S-R18", topology=smpl_topology, flavor="release"), 5)
                          .state_dict())  # fmt: skip
    check_equal(model, images, attention=False, fast=fast)


def test_training_and_gradients_use_the_plain_computation(smpl_topology):
    model = model_for("FastMETRO-S-R18", "release", smpl_topology)
    fast = prepare_for_inference(model)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.enable_grad():
        expected = model(images)["fine_vertices"]
        got = fast(images)["fine_vertices"]
        assert got.requires_grad and torch.equal(expected, got)  # same kernels, bit for bit
        got.sum().backward()
    assert model.transformer_1.decoder.layers[0].self_attn.in_proj_weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_outputs_are_inference_tensors_only_when_asked(smpl_topology):
    model = model_for("FastMETRO-S-R18", "paper", smpl_topology)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert prepare_for_inference(model)(images)["camera"].is_inference()
        assert not prepare_for_inference(model, inference_mode=False)(images)["camera"].is_inference()


def test_bf16_autocast_runs_close(smpl_topology):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 support")
    model = model_for("FastMETRO-S-R18", "paper", smpl_topology)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(images)["fine_vertices"]
        got = prepare_for_inference(model, autocast_dtype="bf16")(images)["fine_vertices"].float()
    scale = float(expected.abs().max())
    assert torch.isfinite(got).all()
    assert float((got - expected).abs().max()) < 0.1 * scale  # lossy, but the same function


def test_csr_upsampling_equals_sparse_matrix(smpl_topology):
    sparse = SparseUpsampling(smpl_topology.upsample[0])
    fast = CSRUpsampling.view_of(sparse).eval()
    coarse = torch.randn(3, smpl_topology.level_vertex_counts[1], 3)
    with torch.no_grad():
        torch.testing.assert_close(fast(coarse), sparse(coarse), atol=1e-6, rtol=1e-5)
        half = fast(coarse.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), sparse(coarse), atol=0.05, rtol=0.05)


def test_metro_view_equals_plain(smpl_topology):
    torch.manual_seed(8)
    small = dict(hidden_dims=(64, 32, 16), output_dims=(32, 16), num_layers=1, intermediate_size=64)
    model = realistic(create_model("METRO-R18", topology=smpl_topology, **small), 8)
    check_equal(model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8)), attention=False)


def test_bad_uses_are_clear_errors(smpl_topology):
    with pytest.raises(FastMetroError, match="needs a FastMETRO"):
        prepare_for_inference(torch.nn.Linear(2, 2))
    fast = prepare_for_inference(model_for("FastMETRO-S-R18", "paper", smpl_topology))
    with pytest.raises(FastMetroError, match="already a fast inference view"):
        prepare_for_inference(fast)
    with pytest.raises(FastMetroError, match="unknown dtype"):
        prepare_for_inference(model_for("FastMETRO-S-R18", "paper", smpl_topology), autocast_dtype="int4")


def test_backbone_copy_is_folded_and_fused_on_cpu(smpl_topology):
    from fastmetro.model.fast_backbone import OneDNNConv2d

    model = model_for("FastMETRO-S-R18", "paper", smpl_topology)
    fast = prepare_for_inference(model)
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model.backbone_features(images)
        got = fast.backbone_features(images)
    assert float((got - expected).abs().max()) <= TOLERANCE * max(1.0, float(expected.abs().max()))
    runner = fast._backbone_runner._runners["exact"]
    fused = [m for m in runner.modules() if isinstance(m, OneDNNConv2d)]
    if torch.backends.mkldnn.is_available():
        assert len(fused) == 20  # every convolution of ResNet-18
        # stem conv + ReLU, and in each of the 8 blocks conv1 + ReLU and conv2 + residual add + ReLU
        assert sum(m.unary == "relu" for m in fused) == 17 and sum(m.add for m in fused) == 8
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.modules())


def test_fused_backbone_packs_weights_per_input_shape(smpl_topology):
    """One image and a batch, two sizes: each shape gets its own packed weights (the last two are
    kept), every one computes the plain function, and the fused copy shares the folded weights."""
    from fastmetro.model.fast_backbone import OneDNNConv2d

    if not torch.backends.mkldnn.is_available():
        pytest.skip("needs oneDNN")
    model = model_for("FastMETRO-S-R18", "paper", smpl_topology)
    fast = prepare_for_inference(model)
    generator = torch.Generator().manual_seed(11)
    shapes = [(1, 3, 96, 96), (3, 3, 96, 96), (1, 3, 128, 128), (1, 3, 96, 96)]
    with torch.no_grad():
        for shape in shapes:
            images = torch.randn(*shape, generator=generator)
            expected, got = model.backbone_features(images), fast.backbone_features(images)
            assert float((got - expected).abs().max()) <= TOLERANCE * max(1.0, float(expected.abs().max())), shape
    runners = fast._backbone_runner._runners
    conv = next(m for m in runners["exact"].modules() if isinstance(m, OneDNNConv2d))
    assert list(conv._packed) == [(1, 3, 128, 128), (1, 3, 96, 96)]  # least recently used dropped
    folded = {t.data_ptr() for t in runners["autocast"].parameters()}
    assert all(m.weight.data_ptr() in folded for m in runners["exact"].modules() if isinstance(m, OneDNNConv2d))


@pytest.mark.slow  # TorchInductor compiles the backbone (tens of seconds on a CPU)
def test_compiled_backbone_equals_plain(smpl_topology):
    model = model_for("FastMETRO-S-R18", "paper", smpl_topology)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    check_equal(model, images, attention=False, fast=prepare_for_inference(model, compile=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_paths(smpl_topology):
    torch.backends.cudnn.allow_tf32 = False  # exact fp32 convolutions for the comparison
    torch.backends.cuda.matmul.allow_tf32 = False
    model = realistic(create_model("FastMETRO-S-R18", topology=smpl_topology), 11).cuda()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11)).cuda()
    fast = check_equal(model, images, attention=True)
    graphed = prepare_for_inference(model, cuda_graphs=True)
    with torch.no_grad():
        expected = model(images)
        for _ in range(2):  # capture, then replay
            got = graphed(images)
            assert max_difference(expected, got) <= TOLERANCE
        bf16 = prepare_for_inference(model, autocast_dtype="bf16")(images)["fine_vertices"].float()
    assert float((bf16 - expected["fine_vertices"]).abs().max()) < 0.1 * float(expected["fine_vertices"].abs().max())
    assert fast is not None
