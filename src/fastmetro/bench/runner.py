"""Variants x paths x batch sizes -> one row of measurements each (see :func:`run_bench`).

Paths:

- ``plain``: the model's own forward under ``torch.no_grad()`` - the released computation
  (nn.MultiheadAttention with the boolean mask, per-call positional codes, index_add upsampling).
- ``fast``: :func:`fastmetro.model.fast.prepare_for_inference` (same function, less work).
- ``onnx``: the fast view exported with :mod:`fastmetro.inference.export` and run by ONNX Runtime
  (whole model only: the exported graph has no backbone / transformer split).

Models are built with random weights (seeded) on the data-free topologies of
:mod:`fastmetro.bench.topologies`; parameter counts equal the real topologies'.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from fastmetro.bench import measure
from fastmetro.bench.topologies import synthetic_topology
from fastmetro.conventions import IMAGE_SIZE
from fastmetro.devices import check_device_name, resolve_device
from fastmetro.errors import FastMetroError
from fastmetro.inference.export import OUTPUT_NAMES, export_onnx
from fastmetro.model.fast import prepare_for_inference
from fastmetro.model.fast_cuda import CUDAGraphModel
from fastmetro.model.fastmetro import FastMETRO, parameter_counts
from fastmetro.model.metro import METRO
from fastmetro.model.presets import model_config, network_class

PATHS = ("plain", "fast", "onnx")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The paper's Table 2 rows and the METRO baseline with both backbones.
DEFAULT_MODELS = (
    "FastMETRO-S-R50", "FastMETRO-M-R50", "FastMETRO-L-R50",
    "FastMETRO-S-H64", "FastMETRO-M-H64", "FastMETRO-L-H64",
    "METRO-R50", "METRO-H64",
)  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    """What ``fastmetro bench`` measures (see ``fastmetro bench --help``)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    tasks: tuple[str, ...] = ("body",)
    flavor: str = "paper"
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 8)
    dtype: str = "fp32"
    paths: tuple[str, ...] = ("plain", "fast")
    image_size: int = IMAGE_SIZE
    warmup: int = 3
    repeats: int = 10
    compile: bool = False
    flops: bool = True
    memory: bool = True
    seed: int = 0
    gemm_size: int = 2048
    cuda_graphs: bool = False
    profile: bool = False
    clock: str = "wall"

    def __post_init__(self):
        problems = []
        if not self.models:
            problems.append("no models")
        if bad := [p for p in self.paths if p not in PATHS]:
            problems.append(f"unknown path(s) {bad}: use {PATHS}")
        if self.dtype not in DTYPES:
            problems.append(f"unknown dtype {self.dtype!r}: use one of {tuple(DTYPES)}")
        if any(b < 1 for b in self.batches) or not self.batches:
            problems.append("batch sizes must be >= 1")
        if self.repeats < 1 or self.warmup < 0:
            problems.append("need repeats >= 1 and warmup >= 0")
        if self.clock not in measure.CLOCKS or (self.clock != "wall" and self.device != "cpu"):
            problems.append(f"clock must be one of {measure.CLOCKS} (process: CPU only)")
        if self.image_size < 32:
            problems.append("image size must be >= 32")
        try:
            check_device_name(self.device, "device")
        except FastMetroError as error:
            problems.append(str(error))
        if bad := [t for t in self.tasks if t not in ("body", "hand")]:
            problems.append(f"unknown task(s) {bad}: use body, hand")
        if problems:
            raise FastMetroError("bench: " + "; ".join(problems))


@dataclass
class PathRunner:
    """How one path computes: ``whole(images)``; ``backbone`` and ``head`` (None for ONNX)."""

    whole: object
    backbone: object = None
    head: object = None  # head(features, images): everything after the backbone
    model: torch.nn.Module | None = None
    context: object = field(default=contextlib.nullcontext)


def bench_network(name: str, task: str, flavor: str, device: torch.device, seed: int) -> torch.nn.Module:
    """A seeded random-weight network on the synthetic topology of ``task``, in eval mode."""
    torch.manual_seed(seed)
    config = model_config(name, flavor)
    return network_class(config)(config, synthetic_topology(task)).eval().to(device)


def _with_features(model: torch.nn.Module):
    """head(features, images): the model's forward with its backbone output replaced by ``features``."""

    def head(features, images):
        model.backbone_features = lambda _images: features  # instance attribute shadows the method
        try:
            return model(images)
        finally:
            del model.backbone_features

    return head


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def make_path(path: str, model, config: BenchConfig, device: torch.device, workdir: Path) -> PathRunner:
    dtype = DTYPES[config.dtype]
    if path == "plain":
        return PathRunner(model, model.backbone_features, _with_features(model), model, _autocast(device, dtype))
    if path == "fast":
        fast = prepare_for_inference(model, compile=config.compile, autocast_dtype=dtype)
        whole = fast
        if config.cuda_graphs and device.type == "cuda":  # whole model replayed; parts timed eagerly
            whole = CUDAGraphModel(fast)
        return PathRunner(whole, fast.backbone_features, _with_features(fast), fast)
    if dtype != torch.float32:
        raise FastMetroError("bench: the onnx path runs in fp32 only (use --dtype fp32)")
    return PathRunner(onnx_runner(model, input_size(model, config), device, workdir))


def input_size(model, config: BenchConfig) -> int:
    """The crop side to time: the backbone's own where its graph fixes one (BlazePose: 256)."""
    fixed = getattr(model.backbone, "input_size", None)
    return int(fixed[0]) if fixed is not None else config.image_size


def onnx_session(path, device: torch.device):
    """An ONNX Runtime session (all graph optimisations, torch's thread count on CPU)."""
    try:
        import onnxruntime
    except ImportError:
        raise FastMetroError("onnxruntime is not installed (pip install 'fastmetro[export]')") from None
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle ONNX Runtime threads spin-wait by default, taking the cores from the paths timed next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def export_fast_onnx(model, image_size: int, path: Path) -> Path:
    """The fast view of ``model`` exported to ONNX by :func:`fastmetro.inference.export.export_onnx`
    (which traces a CPU copy; the first decoder layer's cached part becomes constants)."""
    return export_onnx(prepare_for_inference(model), path, image_size=image_size)


def onnx_runner(model, image_size: int, device: torch.device, workdir: Path):

    path = export_fast_onnx(model, image_size, workdir / f"{id(model)}.onnx")
    session = onnx_session(path, device)

    def whole(images):
        values = session.run(list(OUTPUT_NAMES), {"images": images.detach().cpu().numpy()})
        return dict(zip(OUTPUT_NAMES, values))

    return whole


def _rate(flops: int | None, milliseconds: float | None) -> float | None:
    if not flops or not milliseconds:
        return None
    return flops / (milliseconds / 1000.0) / 1e9


def measure_variant(name: str, task: str, config: BenchConfig, device: torch.device, workdir: Path) -> list[dict]:
    """Rows for one (model, task): every path at every batch size. The plain path is always
    measured (the reference of the ``*_speedup`` ratios); its rows are kept if asked for."""
    model = bench_network(name, task, config.flavor, device, config.seed)
    counts = parameter_counts(cast("FastMETRO | METRO", model))
    paths = ["plain"] + [p for p in config.paths if p != "plain"]
    runners = {path: make_path(path, model, config, device, workdir) for path in paths}
    flavor = "-" if name.upper().startswith("METRO") else config.flavor
    rows = []
    generator = torch.Generator().manual_seed(config.seed)
    for batch in config.batches:
        size = input_size(model, config)
        images = torch.randn(batch, 3, size, size, generator=generator).to(device)
        parts = _time_parts(runners, images, config, device)
        for path in paths:
            if path not in config.paths:
                continue
            row = {"model": name, "task": task, "flavor": flavor, "path": path, "dtype": config.dtype,
                   "batch": batch, **counts, **parts[path]}  # fmt: skip
            for part in ("backbone", "transformer", "whole"):
                value = row.get(f"{part}_ms")
                row[f"{part}_speedup"] = parts["plain"][f"{part}_ms"] / value if value else None
            rows.append(row)
    return rows


def _time_parts(runners: dict, images: torch.Tensor, config: BenchConfig, device: torch.device) -> dict:
    """Backbone / transformer-part / whole times (interleaved across paths), FLOPs and memory."""
    batch = images.shape[0]
    results: dict[str, dict] = {path: {} for path in runners}
    with torch.no_grad():
        features = {}
        for path, runner in runners.items():
            if runner.backbone is not None:
                with runner.context():
                    features[path] = runner.backbone(images)
        calls = {}
        for path, runner in runners.items():
            calls[f"{path}/whole"] = _in_context(runner, lambda r=runner: r.whole(images))
            if runner.backbone is not None:
                calls[f"{path}/backbone"] = _in_context(runner, lambda r=runner: r.backbone(images))
                calls[f"{path}/transformer"] = _in_context(runner, lambda r=runner, p=path: r.head(features[p], images))
        timings = measure.time_interleaved(calls, device, config.warmup, config.repeats, config.clock)
        for key, timing in timings.items():
            path, part = key.split("/")
            results[path][f"{part}_ms"] = timing.median
            results[path][f"{part}_ms_min"] = timing.minimum
        for path, runner in runners.items():
            result = results[path]
            result["images_per_s"] = batch * 1000.0 / result["whole_ms"]
            result["images_per_s_best"] = batch * 1000.0 / result["whole_ms_min"]
            if config.flops and runner.backbone is not None:
                with _without_inference_mode(runner.model):  # operators run there are invisible to counting
                    result["backbone_gflop"] = measure.count_flops(calls[f"{path}/backbone"]) / 1e9
                    result["transformer_gflop"] = measure.count_flops(calls[f"{path}/transformer"]) / 1e9
                for part in ("backbone", "transformer"):
                    result[f"{part}_gflops"] = _rate(result[f"{part}_gflop"] * 1e9, result[f"{part}_ms_min"])
            if config.profile and runner.backbone is not None:
                result["profile"] = {part: measure.profile_operators(calls[f"{path}/{part}"], device)
                                     for part in ("transformer", "backbone")}  # fmt: skip
            if config.memory and runner.model is not None:
                peak = measure.peak_memory_bytes(calls[f"{path}/whole"], device)
                result["peak_mb_per_image"] = None if peak is None else peak / batch / 2**20
    return results


@contextlib.contextmanager
def _without_inference_mode(model):
    """Run a fast view's forward under no_grad instead of inference mode (same results)."""
    previous = model.__dict__.get("_inference_mode")
    if previous is not None:
        model.__dict__["_inference_mode"] = False
    try:
        yield
    finally:
        if previous is not None:
            model.__dict__["_inference_mode"] = previous


def _in_context(runner: PathRunner, function):
    def call():
        with runner.context():
            return function()

    return call


def run_bench(config: BenchConfig, progress=None) -> dict:
    """Measure every (model, task) of ``config``; returns ``{"machine", "gemm_gflops", "rows"}``."""
    device = resolve_device(config.device, "--device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastMetroError("bench: --device cuda but no CUDA device is available")

    def gemm(dtype):
        return measure.gemm_gflops(device, dtype, config.gemm_size, clock=config.clock)

    result: dict[str, Any] = {
        "machine": measure.describe_machine(device),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
        "gemm_gflops": {"fp32": gemm(torch.float32)},
        "rows": [],
    }
    if config.dtype != "fp32":
        result["gemm_gflops"][config.dtype] = gemm(DTYPES[config.dtype])
    with tempfile.TemporaryDirectory(prefix="fastmetro-bench-") as workdir:
        for name in config.models:
            for task in config.tasks:
                if progress is not None:
                    progress(f"{name} {task}")
                result["rows"].extend(measure_variant(name, task, config, device, Path(workdir)))
    for name, value in result["gemm_gflops"].items():  # again at the end: the best is the machine's rate
        result["gemm_gflops"][name] = max(value, gemm(DTYPES[name]))
    return result


def summary_ratios(rows: list[dict]) -> dict:
    """Geometric-mean speed-ups of each non-plain path over plain, per part."""
    out = {}
    for path in sorted({row["path"] for row in rows} - {"plain"}):
        for part in ("backbone", "transformer", "whole"):
            values = [row[f"{part}_speedup"] for row in rows if row["path"] == path and row.get(f"{part}_speedup")]
            if values:
                out[f"{path}/{part}"] = float(np.exp(np.mean(np.log(values))))
    return out
