"""The static int8 ONNX path: int8 convolutions, outputs close to fp32 (not equal), clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastmetro
from fastmetro.errors import FastMetroError
from fastmetro.inference import export as exporter
from fastmetro.inference import quantize


@pytest.fixture(scope="module")
def fp32_onnx(smpl_topology, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = fastmetro.create_model("FastMETRO-S-R18", topology=smpl_topology, flavor="paper").eval()
    with torch.no_grad():  # non-trivial weights, so that int8 rounding shows in the outputs
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    return model, exporter.export_onnx(model, tmp_path_factory.mktemp("int8") / "fp32.onnx", image_size=64)


def test_calibration_photos_are_seeded_normalised_crops():
    first, again, other = (quantize.calibration_photos(6, 48, seed=s) for s in (1, 1, 2))
    assert first.shape == (6, 3, 48, 48) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.5  # another seed, other crops
    assert -2.2 < first.min() and first.max() < 2.7 and first.std() > 0.3  # ImageNet-normalised photos


def test_static_int8_quantises_the_convolutions_and_stays_close(fp32_onnx, tmp_path):
    import onnx

    model, fp32 = fp32_onnx
    calibration = quantize.calibration_photos(8, 64, seed=3)
    path = quantize.quantize_onnx_static(fp32, tmp_path / "int8.onnx", calibration)
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Conv") == 20 and ops.count("DequantizeLinear") >= 40  # ResNet-18: inputs and weights
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weights, zero_points = [t for t in int8 if len(t.dims) == 4], [t for t in int8 if len(t.dims) == 1]
    assert len(weights) == 20 and len(zero_points) == 20  # one zero point per output channel: per-channel
    assert sorted(z.dims[0] for z in zero_points) == sorted(w.dims[0] for w in weights)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically

    images = torch.from_numpy(calibration[:4])
    reference, exported = exporter.pytorch_outputs(model, images), exporter.run_onnx(path, images)
    fp32_out = exporter.run_onnx(fp32, images)
    vertices = np.linalg.norm(exported["fine_vertices"] - reference["fine_vertices"], axis=-1)
    scale = np.linalg.norm(reference["fine_vertices"], axis=-1).mean()
    assert 0 < vertices.mean() < 0.05 * scale  # lossy, but the same function up to rounding
    assert vertices.mean() > 100 * np.abs(fp32_out["fine_vertices"] - reference["fine_vertices"]).max()


def test_static_int8_errors_are_one_line(fp32_onnx, tmp_path):
    _, fp32 = fp32_onnx
    with pytest.raises(FastMetroError, match=r"\(N, 3, S, S\)"):
        quantize.quantize_onnx_static(fp32, tmp_path / "x.onnx", np.zeros((2, 64, 64), np.float32))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(FastMetroError, match="broken.onnx: int8 quantisation failed"):
        quantize.quantize_onnx_static(broken, tmp_path / "y.onnx", quantize.calibration_photos(1, 64))
    assert not (tmp_path / "y.onnx").exists()
    with pytest.raises(FastMetroError, match="at least one image"):
        quantize.calibration_images([], 64)


@pytest.fixture(scope="module")
def int8_view(fp32_onnx):
    pytest.importorskip("torchao")
    from fastmetro.model.fast import prepare_for_inference

    model, _ = fp32_onnx
    calibration = torch.from_numpy(quantize.calibration_photos(8, 64, seed=4))
    return model, prepare_for_inference(model, int8_calibration=calibration)


def test_torch_int8_backbone_is_int8_and_close_to_fp32(int8_view):
    """Batches of any size through one compiled graph, int8 kernels, outputs near fp32 (not equal)."""
    from fastmetro.model.fast import prepare_for_inference

    model, int8 = int8_view
    images = torch.from_numpy(quantize.calibration_photos(3, 64, seed=5))
    with torch.no_grad():
        reference = prepare_for_inference(model)(images)["fine_vertices"]
        batched = int8(images)["fine_vertices"]
        single = torch.cat([int8(images[i : i + 1])["fine_vertices"] for i in range(3)])
        with torch.profiler.profile() as profile:
            int8.backbone_features(images[:1])
    assert batched.shape == reference.shape
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)  # image by image either way
    distance = (batched - reference).norm(dim=-1)
    scale = reference.norm(dim=-1).mean()
    assert 0 < distance.mean() < 0.05 * scale
    kernels = {event.key for event in profile.key_averages()}
    assert any(name.startswith("onednn::qconv") for name in kernels), kernels  # int8 convolutions ran
    assert "aten::mkldnn_convolution" not in kernels  # and no fp32 ones


def test_torch_int8_backbone_refuses_what_it_was_not_built_for(int8_view, smpl_topology):
    from fastmetro.model.fast import prepare_for_inference

    model, int8 = int8_view
    with torch.no_grad(), pytest.raises(FastMetroError, match=r"quantised for images \(3, 64, 64\)"):
        int8(torch.zeros(1, 3, 96, 96))
    with pytest.raises(FastMetroError, match=r"\(N, 3, S, S\)"):
        prepare_for_inference(model, int8_calibration=torch.zeros(3, 64, 64))
    other = fastmetro.create_model("FastMETRO-S-R18", topology=smpl_topology, flavor="paper").eval()
    view = prepare_for_inference(other, int8_calibration=torch.from_numpy(quantize.calibration_photos(2, 64)))
    with torch.no_grad():
        next(other.backbone.parameters()).mul_(1.5)  # trained further after quantising
        with pytest.raises(FastMetroError, match="weights changed since it was quantised"):
            view(torch.zeros(1, 3, 64, 64))


def test_predictor_int8_runs_the_int8_backbone(fp32_onnx, tmp_path):
    """Predictor(int8=True, calibration=files): the people come from the int8 view, close to fp32."""
    pytest.importorskip("torchao")
    from PIL import Image

    from fastmetro import Predictor
    from fastmetro.model.fast_int8 import Int8Backbone

    model, _ = fp32_onnx
    photo = (np.clip(quantize.calibration_photos(1, 96, seed=6)[0].transpose(1, 2, 0) * 60 + 120, 0, 255)).astype(
        np.uint8
    )
    Image.fromarray(photo).save(tmp_path / "crop.png")
    fp32 = Predictor(model=model, image_size=64)
    int8 = Predictor(model=model, image_size=64, calibration=[tmp_path / "crop.png"])
    assert isinstance(int8.model._backbone_runner, Int8Backbone)
    box = [(10, 10, 80, 80)]
    a = fp32.predict(photo, boxes=box).people[0].vertices
    b = int8.predict(photo, boxes=box).people[0].vertices
    distance = np.linalg.norm(a - b, axis=-1)
    assert 0 < distance.mean() < 0.05 * np.linalg.norm(a - a.mean(0), axis=-1).mean()
    with pytest.raises(FastMetroError, match="int8 runs on the CPU"):
        Predictor(model=model, image_size=64, int8=True, device="meta")
