"""ONNX / TorchScript export: the exported model's outputs equal PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastmetro
from fastmetro.errors import FastMetroError
from fastmetro.inference import export as exporter

_MODELS = {}


def build(flavor: str, topology):
    """S-R18 in a flavor (paper: fixed sparse upsampling at every level; release: a learnable
    coarse step), built once per test session."""
    if flavor not in _MODELS:
        torch.manual_seed(0)
        network = fastmetro.create_model("FastMETRO-S-R18", topology=topology, flavor=flavor).eval()
        with torch.no_grad():  # make the (zero-init) parts non-trivial so differences would show
            for parameter in network.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.01)
        _MODELS[flavor] = network
    return _MODELS[flavor]


@pytest.fixture(params=["paper", "release"])
def model(request, smpl_topology):
    return build(request.param, smpl_topology)


@pytest.fixture()
def release_model(smpl_topology):
    return build("release", smpl_topology)


def test_gather_upsampling_equals_the_sparse_matrix(smpl_topology):
    from fastmetro.model.fastmetro import SparseUpsampling

    sparse = SparseUpsampling(smpl_topology.upsample[0])
    gather = exporter.GatherUpsampling(sparse.rows, sparse.cols, sparse.values, sparse.out_vertices)
    coarse = torch.randn(2, smpl_topology.level_vertex_counts[1], 3)
    dense = torch.as_tensor(smpl_topology.upsample[0].toarray(), dtype=torch.float32)
    assert torch.allclose(gather(coarse), dense @ coarse, atol=1e-6)
    assert torch.allclose(sparse(coarse), gather(coarse), atol=1e-6)


def test_onnx_matches_pytorch(model, tmp_path):
    pytest.importorskip("onnxruntime")
    size = 224 if model.spec.flavor == "paper" else 128  # any size exports; keep the suite fast
    path = exporter.export_onnx(model, tmp_path / "model.onnx", image_size=size)
    images = exporter.example_input(size, batch_size=3, seed=5)  # exported with batch 1: dynamic batch
    differences = exporter.max_abs_difference(model, path, "onnx", images)
    print("ONNX max abs diff:", differences)
    assert set(differences) == set(exporter.OUTPUT_NAMES)
    assert max(differences.values()) <= 1e-4, differences
    outputs = exporter.run_onnx(path, images)
    assert outputs["fine_vertices"].shape == (3, 6890, 3)
    assert np.abs(outputs["fine_vertices"]).max() > 1e-3  # not a degenerate all-zero comparison
    # The exported mesh is in the camera's frame: centred on its root point.
    root = np.asarray(model.topology.root_regressor, dtype=np.float32) @ outputs["fine_vertices"]
    assert np.abs(root).max() < 5e-4  # float32 sums over 6890 vertices


def test_torchscript_matches_pytorch(release_model, tmp_path):
    model = release_model  # one flavor suffices here; both go through ONNX above
    path = exporter.export_torchscript(model, tmp_path / "model.pt", image_size=128)
    images = exporter.example_input(128, batch_size=2, seed=7)
    differences = exporter.max_abs_difference(model, path, "torchscript", images)
    print("TorchScript max abs diff:", differences)
    assert max(differences.values()) <= 1e-4, differences


def test_failed_export_leaves_no_file(release_model, tmp_path, monkeypatch):
    model = release_model

    def broken(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    target = tmp_path / "model.onnx"
    with pytest.raises(FastMetroError, match="model.onnx"):
        exporter.export_onnx(model, target)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format(release_model, tmp_path):
    with pytest.raises(FastMetroError, match="unknown export format"):
        exporter.export(release_model, tmp_path / "m.bin", "tflite")
