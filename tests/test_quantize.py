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
