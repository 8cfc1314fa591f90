"""Opt-in paths that trade a little accuracy for speed, measured against the fp32 fast path.

- ``fast-int8``: :func:`torch.ao.quantization.quantize_dynamic` of the ``nn.Linear`` layers
  (int8 weights, activations quantised per call; the FFNs, dimension reductions and heads - the
  attention projections are not ``nn.Linear`` modules and stay fp32), CPU only, then the fast view.
- ``fast-int8-static``: the fast view with the backbone in static int8
  (:class:`fastmetro.model.fast_int8.Int8Backbone`, calibrated on the photo crops below; needs
  torchao), CPU only;
- ``fast-bf16``: the fast view under bf16 autocast (CPUs with AVX-512-BF16/AMX, or CUDA).
- ``onnx`` / ``onnx-int8``: the exported fast view in ONNX Runtime, and the same file after
  :func:`onnxruntime.quantization.quantize_dynamic` (int8 weights of MatMul/Gemm);
- ``onnx-int8-static``: static int8 of the backbone's convolutions in ONNX Runtime
  (:func:`fastmetro.inference.quantize.quantize_onnx_static`: per-channel weights, activation
  ranges calibrated on crops of the photographs scikit-image ships), the rest fp32.

For each: whole-model time at every configured batch size (interleaved with fp32 fast in one
run) and, on a fixed seeded set of input images, the output difference from fp32 fast in
millimetres: mean and max per-vertex distance of ``fine_vertices`` and of ``joints`` (root-centred,
as the exported model gives them, so every path is compared in the same frame). With
random weights the outputs are not meshes of people; the ``scale_mm`` column (mean distance of
the fp32 fine vertices from their centroid) says how large the outputs are.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from fastmetro.bench import measure, report
from fastmetro.bench.runner import BenchConfig, bench_network, export_fast_onnx, onnx_session
from fastmetro.inference.export import camera_frame_outputs
from fastmetro.inference.quantize import calibration_photos, quantize_onnx_static
from fastmetro.model.fast import prepare_for_inference


def _torch_call(model, mha_fast_path: bool = True):
    topology = model.plain_model.topology if hasattr(model, "plain_model") else model.topology
    root_regressor = torch.tensor(np.asarray(topology.root_regressor), dtype=torch.float32)

    def call(images):
        previous = torch.backends.mha.get_fastpath_enabled()
        # nn.TransformerEncoderLayer's fused path reads linear1.weight, which a dynamically
        # quantised Linear does not have (METRO's encoder): take the unfused path there.
        torch.backends.mha.set_fastpath_enabled(previous and mha_fast_path)
        try:
            with torch.no_grad():
                out = model(images)
        finally:
            torch.backends.mha.set_fastpath_enabled(previous)
            # root-centred like the exported model's outputs (the ONNX paths' frame)
            out = camera_frame_outputs(out, root_regressor.to(images.device), topology.root_joints)
        return {k: out[k].float().cpu().numpy() for k in ("fine_vertices", "joints")}

    return call


def _onnx_call(path: Path, device: torch.device):
    session = onnx_session(path, device)

    def call(images):
        fine, joints = session.run(["fine_vertices", "joints"], {"images": images.detach().cpu().numpy()})
        return {"fine_vertices": fine, "joints": joints}

    return call


def lossy_paths(model, config: BenchConfig, device: torch.device, workdir: Path, calibration: int = 32) -> dict:
    """name -> call(images) -> {"fine_vertices", "joints"} numpy arrays; "fast" is the fp32 reference."""
    paths = {"fast": _torch_call(prepare_for_inference(model))}
    if device.type == "cpu":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
            quantised = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8
            )
        paths["fast-int8"] = _torch_call(prepare_for_inference(quantised), mha_fast_path=False)
        if importlib.util.find_spec("torchao") is not None:  # the int8 extra
            crops = torch.from_numpy(calibration_photos(calibration, config.image_size, seed=config.seed))
            paths["fast-int8-static"] = _torch_call(prepare_for_inference(model, int8_calibration=crops))
    if device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        paths["fast-bf16"] = _torch_call(prepare_for_inference(model, autocast_dtype="bf16"))
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return paths
    fp32 = export_fast_onnx(model, config.image_size, workdir / "model.onnx")
    paths["onnx"] = _onnx_call(fp32, device)
    int8 = workdir / "model-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    paths["onnx-int8"] = _onnx_call(int8, device)
    if device.type == "cpu":
        photos = calibration_photos(calibration, config.image_size, seed=config.seed)
        static = quantize_onnx_static(fp32, workdir / "model-int8-static.onnx", photos)
        paths["onnx-int8-static"] = _onnx_call(static, device)
    return paths


def _differences(reference: dict, outputs: dict) -> dict:
    result = {}
    for key, name in (("fine_vertices", "vertices"), ("joints", "joints")):
        distance = np.linalg.norm(outputs[key].astype(np.float64) - reference[key], axis=-1) * 1000.0
        result[f"{name}_mean_mm"] = float(distance.mean())
        result[f"{name}_max_mm"] = float(distance.max())
    return result


def run_lossy(config: BenchConfig, num_images: int = 8, progress=None, calibration: int = 32) -> dict:
    """Rows (model, task, path, batch, ms, images/s, speed-up over fp32 fast, differences in mm)."""
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed + 1)
    fixed = torch.randn(num_images, 3, config.image_size, config.image_size, generator=generator).to(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastmetro-lossy-") as workdir:
        for name in config.models:
            for task in config.tasks:
                if progress is not None:
                    progress(f"lossy {name} {task}")
                model = bench_network(name, task, config.flavor, device, config.seed)
                paths = lossy_paths(model, config, device, Path(workdir) / f"{name}-{task}", calibration)
                reference = paths["fast"](fixed)
                centroid = reference["fine_vertices"] - reference["fine_vertices"].mean(axis=1, keepdims=True)
                scale = float(np.linalg.norm(centroid, axis=-1).mean() * 1000.0)
                differences = {path: _differences(reference, call(fixed)) for path, call in paths.items()}
                for batch in config.batches:
                    images = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator).to(device)
                    calls = {path: (lambda c=call, x=images: c(x)) for path, call in paths.items()}
                    timings = measure.time_interleaved(calls, device, config.warmup, config.repeats, config.clock)
                    for path, timing in timings.items():
                        rows.append({
                            "model": name, "task": task, "path": path, "batch": batch,
                            "whole_ms": timing.median, "whole_ms_min": timing.minimum,
                            "images_per_s": batch * 1000.0 / timing.median,
                            "speedup_vs_fast": timings["fast"].median / timing.median,
                            "scale_mm": scale, **differences[path],
                        })  # fmt: skip
    return {"num_images": num_images, "calibration_images": calibration, "rows": rows}


def format_lossy(lossy: dict) -> str:
    body = [
        [r["model"], r["task"], r["path"], str(r["batch"]), f"{r['whole_ms']:.1f} ({r['whole_ms_min']:.1f})",
         f"{r['images_per_s']:.1f}", f"{r['speedup_vs_fast']:.2f}x", f"{r['vertices_mean_mm']:.3f}",
         f"{r['vertices_max_mm']:.3f}", f"{r['joints_mean_mm']:.3f}", f"{r['joints_max_mm']:.3f}",
         f"{r['scale_mm']:.0f}"]
        for r in lossy["rows"]
    ]  # fmt: skip
    header = ["model", "task", "path", "batch", "ms", "images/s", "x fast", "vertices mean mm", "max",
              "joints mean mm", "max", "scale_mm"]  # fmt: skip
    title = (f"Lossy paths vs the fp32 fast path (differences on {lossy['num_images']} fixed seeded images; "
             "times median (min) ms, interleaved)")  # fmt: skip
    return title + "\n" + report.table(header, body, left=3)
