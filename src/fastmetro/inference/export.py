"""Export a FastMETRO network to ONNX or TorchScript.

The exported graph takes ImageNet-normalised images (B, 3, S, S) (S fixed at export time, the
batch size free) and returns the tensors of :data:`OUTPUT_NAMES`, in metres, in the camera's
frame (:func:`fastmetro.conventions.root_centred`): ``joints`` centred on their root joints,
``coarse_vertices``, ``fine_vertices`` and ``mesh_joints`` on the root point of the fine mesh, so
``camera`` = (s, tx, ty) projects them directly (``s * (X_xy + t)``).

The model's fixed coarse-to-fine upsampling is a sparse matrix applied with ``index_add``; for
export it is replaced (on a copy of the model) by an equivalent gather over a padded row table
(every output vertex mixes at most P input vertices; GraphCMR's matrices have P = 3), which every
ONNX runtime executes with plain Gather/Mul/ReduceSum and which is cheaper than a dense matrix.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from fastmetro.conventions import IMAGE_SIZE, root_centred
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_save
from fastmetro.model.fast import inference_view
from fastmetro.model.fastmetro import SparseUpsampling

if TYPE_CHECKING:
    from fastmetro.topology import Topology

#: Outputs of an exported model, in this order.
OUTPUT_NAMES = ("camera", "joints", "coarse_vertices", "fine_vertices", "mesh_joints")
FORMATS = ("onnx", "torchscript")


class GatherUpsampling(nn.Module):
    """(B, V_in, C) -> (B, V_out, C) with ``out[:, i] = sum_p weight[i, p] * x[:, index[i, p]]``.

    Built from the COO buffers of :class:`fastmetro.model.fastmetro.SparseUpsampling`; padded
    slots have weight 0 and index 0.
    """

    index: torch.Tensor
    weight: torch.Tensor

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, out_vertices: int):
        super().__init__()
        rows_np, cols_np, values_np = (t.detach().cpu().numpy() for t in (rows, cols, values))
        per_row = np.bincount(rows_np, minlength=out_vertices)
        width = max(int(per_row.max()) if per_row.size else 1, 1)
        index = np.zeros((out_vertices, width), dtype=np.int64)
        weight = np.zeros((out_vertices, width), dtype=np.float32)
        order = np.argsort(rows_np, kind="stable")
        slot = np.arange(len(order)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        index[rows_np[order], slot] = cols_np[order]
        weight[rows_np[order], slot] = values_np[order]
        self.register_buffer("index", torch.from_numpy(index), persistent=False)
        self.register_buffer("weight", torch.from_numpy(weight), persistent=False)

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        gathered = vertices[:, self.index]  # (B, V_out, P, C)
        return (gathered * self.weight.to(vertices.dtype)[None, :, :, None]).sum(dim=2)


def _export_friendly(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with sparse upsampling replaced by gathers."""
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, SparseUpsampling):
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            replacement = GatherUpsampling(module.rows, module.cols, module.values, module.out_vertices)
            setattr(parent, attribute, replacement.to(module.values.device))
    return model


def camera_frame_outputs(outputs: dict, root_regressor: torch.Tensor, root_joints) -> dict[str, torch.Tensor]:
    """The exported tensors from a network output dict: :data:`OUTPUT_NAMES`, root-centred."""
    centred = root_centred(outputs, root_regressor, root_joints)
    levels = centred["vertices_by_level"]
    return {
        "camera": outputs["camera"],
        "joints": centred["joints"],
        "coarse_vertices": levels[-1],
        "fine_vertices": levels[0],
        "mesh_joints": centred["mesh_joints"],
    }


class ExportWrapper(nn.Module):
    """images (B, 3, S, S) -> tuple of :data:`OUTPUT_NAMES` tensors (a plain-tensor signature)."""

    root_regressor: torch.Tensor

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = _export_friendly(inference_view(model))  # the fast path: same function, fewer ops
        topology = cast("Topology", model.topology)  # a plain attribute, not a submodule
        self.root_joints = tuple(topology.root_joints)
        self.register_buffer(
            "root_regressor", torch.tensor(np.asarray(topology.root_regressor), dtype=torch.float32), persistent=False
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = camera_frame_outputs(self.model(images), self.root_regressor, self.root_joints)
        return tuple(outputs[name] for name in OUTPUT_NAMES)


@contextlib.contextmanager
def _mha_fast_path_disabled():
    """In eval mode nn.MultiheadAttention may take a fused kernel that ONNX cannot express;
    trace the plain (mathematically identical) path instead."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            # Tracing warns about Python-level shape checks, which are constant for a fixed size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            # TorchScript is deprecated upstream but still the portable C++/mobile format.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def example_input(image_size: int = IMAGE_SIZE, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, image_size, image_size, generator=generator)


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: int = IMAGE_SIZE, opset: int = 17) -> Path:
    """Write ``model`` as ONNX (dynamic batch axis) to ``path`` atomically."""
    path = Path(path)
    wrapper = ExportWrapper(model).cpu()
    example = example_input(image_size)
    dynamic_axes = {"images": {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}

    def write(tmp_name: str) -> None:
        with torch.no_grad(), _mha_fast_path_disabled():
            torch.onnx.export(
                wrapper,
                (example,),
                tmp_name,
                input_names=["images"],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,  # the TorchScript-based exporter handles this graph directly
            )

    try:
        atomic_save(path, write)
    except FastMetroError:
        raise
    except Exception as error:
        raise FastMetroError(f"{path}: ONNX export failed ({type(error).__name__}: {error})") from None
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, image_size: int = IMAGE_SIZE) -> Path:
    """Write ``model`` as a traced TorchScript module to ``path`` atomically."""
    path = Path(path)
    wrapper = ExportWrapper(model).cpu()
    with torch.no_grad(), _mha_fast_path_disabled():
        traced = torch.jit.trace(wrapper, (example_input(image_size),), check_trace=False)
        atomic_save(path, lambda tmp_name: torch.jit.save(traced, tmp_name))
    return path


def export(model: nn.Module, path: str | os.PathLike, format: str, image_size: int = IMAGE_SIZE) -> Path:
    if format == "onnx":
        return export_onnx(model, path, image_size)
    if format == "torchscript":
        return export_torchscript(model, path, image_size)
    raise FastMetroError(f"unknown export format {format!r}: use one of {FORMATS}")


def pytorch_outputs(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The exported tensors computed by the PyTorch model itself (the reference of the checks)."""
    topology = cast("Topology", model.topology)  # a plain attribute, not a submodule
    root_regressor = torch.tensor(np.asarray(topology.root_regressor), dtype=torch.float32)
    with torch.no_grad():
        outputs = camera_frame_outputs(model.eval()(images), root_regressor, tuple(topology.root_joints))
    return {name: outputs[name].detach().cpu().numpy() for name in OUTPUT_NAMES}


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Run an exported ONNX file with ONNX Runtime on the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise FastMetroError("onnxruntime is not installed (pip install 'fastmetro[export]')") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = session.run(list(OUTPUT_NAMES), {"images": images.cpu().numpy()})
    return dict(zip(OUTPUT_NAMES, values))


def run_torchscript(path: str | os.PathLike, images: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad(), _mha_fast_path_disabled():
        module = torch.jit.load(str(path), map_location="cpu")
        values = module(images)
    return {name: value.numpy() for name, value in zip(OUTPUT_NAMES, values)}


def max_abs_difference(
    model: nn.Module, path: str | os.PathLike, format: str, images: torch.Tensor
) -> dict[str, float]:
    """Per-output max |exported - PyTorch| on ``images`` (CPU)."""
    reference = pytorch_outputs(model.cpu(), images)
    exported = run_onnx(path, images) if format == "onnx" else run_torchscript(path, images)
    return {name: float(np.abs(exported[name] - reference[name]).max()) for name in OUTPUT_NAMES}


__all__ = [
    "OUTPUT_NAMES",
    "FORMATS",
    "GatherUpsampling",
    "ExportWrapper",
    "camera_frame_outputs",
    "export",
    "export_onnx",
    "export_torchscript",
    "run_onnx",
    "run_torchscript",
    "max_abs_difference",
]
