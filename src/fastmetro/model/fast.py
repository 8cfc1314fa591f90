"""The fast inference path: :func:`prepare_for_inference` (same function as the plain forward, less work).

``fast = prepare_for_inference(model)`` returns a *view* of a :class:`FastMETRO` (any preset,
flavor, topology or Table 4 ablation): an instance of :class:`FastMETROInference` (a FastMETRO
subclass) whose parameters, submodules and state-dict names are the model's own, with these
pieces swapped in (the forward itself is FastMETRO's, so heads added to it compose):

- ``conv_1x1`` -> :class:`PointwiseConvolution` (one matmul straight into token layout);
- both transformers -> :class:`~fastmetro.model.fast_transformer.FastTransformer` (fused
  attention with the mask prepared once, cached positional projections, first decoder layer of
  transformer 1 computed once);
- position encodings -> :class:`CachedPositionEncoding` (once per input size, device, dtype);
- fixed sparse upsampling -> :class:`CSRUpsampling` (one sparse CSR matmul for the whole batch,
  no per-sample loop, no index_add, no host-device copy);
- backbone -> :class:`~fastmetro.model.fast_backbone.ChannelsLastBackbone` (a channels-last
  copy with BatchNorm folded into the convolutions and, on CPU, each convolution one oneDNN call
  fused with its ReLU / residual add; refreshed automatically when the backbone's weights change;
  optional ``torch.compile``);
- the forward runs under :func:`torch.inference_mode` (outputs are inference tensors; see
  ``inference_mode=``);
- optional: ``autocast_dtype`` (bf16/fp16, lossy), ``cuda_graphs`` (captured and replayed
  forward, :mod:`fastmetro.model.fast_cuda`), ``compile`` (TorchInductor on the backbone),
  ``int8_calibration`` (the backbone in static int8 on CPU, lossy, :mod:`fastmetro.model.fast_int8`).

A METRO baseline (:mod:`fastmetro.model.metro`) gets a view with the backbone, inference-mode and
autocast parts only (its encoder layers already take PyTorch's fused inference kernels).

In training mode or with gradients enabled every swapped piece runs the plain computation, so a
view never changes what training computes. Prepare after moving the model to its device
(``model.to(device)``): the view shares parameters and submodules, not the buffer tables.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.model.fast_backbone import ChannelsLastBackbone
from fastmetro.model.fast_cuda import CUDAGraphModel
from fastmetro.model.fast_int8 import Int8Backbone
from fastmetro.model.fast_transformer import FastTransformer
from fastmetro.model.fastmetro import FastMETRO, SparseUpsampling
from fastmetro.model.metro import METRO
from fastmetro.model.position_encoding import PositionEncodingSine

if TYPE_CHECKING:
    from fastmetro.model.metro import METRO

    # For the type checker, the mixin's super() is the viewed model class (it follows it in the MRO).
    _ViewedModel = FastMETRO
else:
    _ViewedModel = object

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _capturing(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _plain(module: nn.Module) -> bool:
    """Whether ``module`` must run the plain computation now (training or autograd recording)."""
    return module.training or torch.is_grad_enabled()


class CachedPositionEncoding(PositionEncodingSine):
    """:class:`PositionEncodingSine` computed once per (batch-free) input size, device and dtype."""

    _cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor]

    @classmethod
    def view_of(cls, encoding: PositionEncodingSine) -> CachedPositionEncoding:
        cached = cls(2 * encoding.num_pos_feats, encoding.temperature, encoding.normalize, encoding.scale)
        cached._cache = {}
        return cached

    def forward(self, batch_size: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        key = (int(height), int(width), str(torch.device(device) if device is not None else "cpu"), dtype)
        pos = self._cache.get(key)
        if pos is None:
            pos = self._cache[key] = super().forward(1, height, width, device, dtype).contiguous()
        return pos.expand(batch_size, -1, -1, -1)


class CSRUpsampling(SparseUpsampling):
    """:class:`SparseUpsampling` as one CSR sparse-dense matmul over the whole batch.

    (B, V_in, C) is viewed as (V_in, B*C) (a copy only if the input is not already vertex-major),
    multiplied by the (V_out, V_in) CSR matrix, and returned as a (B, V_out, C) view of the
    vertex-major result. The CSR matrix is built once per device. Computes in float32/float64
    (inputs of other dtypes are converted and the result converted back).
    """

    _csr: dict[tuple[str, torch.dtype], torch.Tensor]

    @classmethod
    def view_of(cls, upsampling: SparseUpsampling) -> CSRUpsampling:
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.out_vertices, fast.in_vertices = upsampling.out_vertices, upsampling.in_vertices
        for name in ("rows", "cols", "values"):
            fast.register_buffer(name, getattr(upsampling, name), persistent=False)
        fast.training = upsampling.training
        fast._csr = {}
        return fast

    def _matrix(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (str(device), dtype)
        matrix = self._csr.get(key)
        if matrix is None:
            indices = torch.stack([self.rows, self.cols]).to(device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                coo = torch.sparse_coo_tensor(
                    indices, self.values.to(device=device, dtype=dtype), (self.out_vertices, self.in_vertices)
                )
                matrix = self._csr[key] = coo.coalesce().to_sparse_csr()
        return matrix

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        if _plain(self) or vertices.device.type not in ("cpu", "cuda") or _capturing(vertices):
            return super().forward(vertices)  # (in CUDA graph capture: index_add, which captures safely)
        batch, num_in, channels = vertices.shape
        compute = vertices.dtype if vertices.dtype in (torch.float32, torch.float64) else torch.float32
        columns = vertices.to(compute).transpose(0, 1).reshape(num_in, batch * channels)
        # Sparse kernels take float32/64 only: keep autocast from converting the operands.
        with warnings.catch_warnings(), torch.autocast(vertices.device.type, enabled=False):
            warnings.simplefilter("ignore")
            out = self._matrix(vertices.device, compute) @ columns
        return out.reshape(self.out_vertices, batch, channels).transpose(0, 1).to(vertices.dtype)


class PointwiseConvolution(nn.Conv2d):
    """A 1 x 1 convolution (FastMETRO's ``conv_1x1``) as one matmul over the feature-map positions.

    Returns (B, C_out, h, w) as a view of the (B, h*w, C_out) result, so the caller's
    ``flatten(2).transpose(1, 2)`` to tokens is free. (For a 7 x 7 map PyTorch's convolution
    takes a slow im2col kernel; on a channels-last map the matmul reads the input in place.)
    """

    @classmethod
    def view_of(cls, conv: nn.Conv2d) -> nn.Module:
        pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
        if not pointwise or conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1):
            return conv
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.__dict__.update({k: v for k, v in conv.__dict__.items() if not k.startswith("_")})
        fast._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        fast.weight, fast.bias = conv.weight, conv.bias
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _plain(self):
            return super().forward(x)
        batch, channels, height, width = x.shape
        weight = self.weight.view(self.out_channels, channels)
        tokens = nn.functional.linear(x.flatten(2).transpose(1, 2), weight, self.bias)  # (B, h*w, C_out)
        return tokens.transpose(1, 2).unflatten(2, (height, width))


class InferenceView(_ViewedModel):
    """Mixin of the inference views: autocast and inference mode around the viewed class's
    forward, and the channels-last backbone in :meth:`backbone_features`."""

    _autocast_dtype: torch.dtype | None
    _inference_mode: bool
    _backbone_runner: Callable[[torch.Tensor], torch.Tensor] | None

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        context = contextlib.ExitStack()
        if self._autocast_dtype is not None:
            # No cast cache while a CUDA graph is captured (its buffers must live in the graph).
            cache = not _capturing(images)
            context.enter_context(torch.autocast(images.device.type, dtype=self._autocast_dtype, cache_enabled=cache))
        if self._inference_mode and not self.training and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            context.enter_context(torch.inference_mode())
        with context:
            return super().forward(images, return_attention)

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        if _plain(self) or self._backbone_runner is None or torch.jit.is_tracing():
            return super().backbone_features(images)
        return self._backbone_runner(images)


class FastMETROInference(InferenceView, FastMETRO):
    """A :class:`FastMETRO` view running the fast inference path (see the module docstring).

    ``forward`` returns the same dict as the viewed model's (same keys, shapes, attention maps).
    """


def prepare_for_inference(
    model: FastMETRO | METRO,
    compile: bool = False,
    channels_last: bool = True,
    fold_batchnorm: bool = True,
    inference_mode: bool = True,
    autocast_dtype: torch.dtype | str | None = None,
    cuda_graphs: bool = False,
    int8_calibration: torch.Tensor | None = None,
) -> nn.Module:
    """A fast inference view of ``model`` (see the module docstring); ``model`` is not changed.

    Args:
        model: a :class:`FastMETRO` (e.g. from :func:`fastmetro.create_model`), already on its
            device. A :class:`~fastmetro.model.metro.METRO` baseline gets the backbone, inference
            mode and autocast parts (its encoder already runs PyTorch's fused kernels).
        compile: compile the backbone with TorchInductor (weights frozen into the code; the
            first call takes tens of seconds; needs a C++ compiler on CPU).
        channels_last: run the backbone channels-last (oneDNN's preferred layout on CPU, tensor
            cores' on GPU).
        fold_batchnorm: run the backbone from a derived copy: BatchNorm folded into the
            convolutions and, on CPU, oneDNN-fused convolutions (needs a torch.fx-traceable
            backbone; others run unfolded). Costs one copy of the backbone's weights.
        inference_mode: run under :func:`torch.inference_mode` when gradients are off. Outputs
            are then inference tensors (readable everywhere, not modifiable in place outside
            inference mode).
        autocast_dtype: ``None`` (exact), or ``"bf16"``/``"fp16"`` (or a torch dtype): run under
            :func:`torch.autocast` (lossy; bf16 on CPUs with AVX-512-BF16/AMX, bf16/fp16 on GPUs).
        cuda_graphs: return a :class:`~fastmetro.model.fast_cuda.CUDAGraphModel` around the view
            (CUDA models: one captured graph per input shape, replayed; see that class).
        int8_calibration: (N, 3, S, S) normalised images: run the backbone in static int8,
            calibrated on them (lossy, CPU; :class:`~fastmetro.model.fast_int8.Int8Backbone`,
            needs torchao and a C++ compiler); the rest stays the fp32 fast path.
    """
    if isinstance(model, InferenceView):
        raise FastMetroError("prepare_for_inference: the model is already a fast inference view")
    if not isinstance(model, (FastMETRO, METRO)):
        raise FastMetroError(f"prepare_for_inference needs a FastMETRO (or METRO) model, got {type(model).__name__}")
    if isinstance(autocast_dtype, str):
        if autocast_dtype not in DTYPES:
            raise FastMetroError(f"unknown dtype {autocast_dtype!r}: use one of {tuple(DTYPES)}")
        autocast_dtype = DTYPES[autocast_dtype]
    if autocast_dtype == torch.float32:
        autocast_dtype = None

    fast = _shallow_view(model)
    runner: Callable[[torch.Tensor], torch.Tensor] | None = None
    if int8_calibration is not None:
        runner = Int8Backbone(model.backbone, int8_calibration)
    elif channels_last or compile:
        runner = ChannelsLastBackbone(model.backbone, fold_batchnorm, compile)
    fast.__dict__["_backbone_runner"] = runner
    fast.__dict__["_inference_mode"] = bool(inference_mode)
    fast.__dict__["_autocast_dtype"] = autocast_dtype
    fast.__dict__["plain_model"] = model  # plain attribute (not a submodule): the viewed model
    if not isinstance(model, METRO):  # METRO's encoder blocks already run PyTorch's fused kernels
        _swap_fast_modules(fast, model)
    if cuda_graphs:
        if next(model.parameters()).device.type != "cuda":
            raise FastMetroError("prepare_for_inference: cuda_graphs=True needs a model on a CUDA device")
        return CUDAGraphModel(fast)
    return fast


def _swap_fast_modules(fast: nn.Module, model: FastMETRO) -> None:
    """Put the fast transformers, cached position encodings and CSR upsampling into ``fast``."""
    fast.transformer_1 = FastTransformer.view_of(
        model.transformer_1, model.attention_mask, (model.joint_token_embed.weight, model.vertex_token_embed.weight)
    )
    fast.transformer_2 = FastTransformer.view_of(model.transformer_2, model.attention_mask)
    fast.conv_1x1 = PointwiseConvolution.view_of(model.conv_1x1)
    fast.position_encoding_1 = CachedPositionEncoding.view_of(model.position_encoding_1)
    fast.position_encoding_2 = CachedPositionEncoding.view_of(model.position_encoding_2)
    for name in model.upsampling_steps:
        step = getattr(model, name)
        if isinstance(step, SparseUpsampling):
            setattr(fast, name, CSRUpsampling.view_of(step))


_VIEW_CLASSES: dict[type, type[nn.Module]] = {FastMETRO: FastMETROInference}


def _shallow_view(model: nn.Module) -> nn.Module:
    """A new module of the view class of ``type(model)`` sharing ``model``'s attributes,
    parameters, buffers and submodules (its own tables, so swapping a submodule in the view
    leaves ``model`` alone)."""
    base = type(model)
    if base not in _VIEW_CLASSES:
        _VIEW_CLASSES[base] = type(f"{base.__name__}Inference", (InferenceView, base), {})
    view = _VIEW_CLASSES[base].__new__(_VIEW_CLASSES[base])
    view.__dict__.update(model.__dict__)
    for name in ("_modules", "_parameters", "_buffers"):
        view.__dict__[name] = dict(model.__dict__[name])
    view.__dict__["_non_persistent_buffers_set"] = set(model._non_persistent_buffers_set)
    return view


def inference_view(model: nn.Module, **options) -> nn.Module:
    """:func:`prepare_for_inference` (``options``) for a FastMETRO or METRO network; any other
    module (including a view already) is returned unchanged."""
    if isinstance(model, InferenceView) or not isinstance(model, (FastMETRO, METRO)):
        return model
    return prepare_for_inference(model, **options)
