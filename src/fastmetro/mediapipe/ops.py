"""TFLite builtin ops as PyTorch modules, for :class:`fastmetro.mediapipe.graph.TFLiteNet`.

Layout: a 4-D activation is held in NCHW (torch's layout, what nn.Conv2d wants); every other
tensor is held as TFLite holds it. An op whose meaning depends on the layout (RESHAPE,
CONCATENATION, MEAN, PAD, FULLY_CONNECTED) either maps its axes from NHWC to NCHW or runs on an
NHWC view, so the numbers are TFLite's. Static shapes come from the graph (batch 1); the batch
dimension of activations may be any B.

Each module takes the op's activation inputs (constant inputs are baked in as parameters) and
returns its single output. ``build(op, graph)`` makes the module for one :class:`Operator`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe.tflite_reader import Graph, Operator

# NHWC axis -> NCHW axis, for 4-D tensors.
NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)
SAME = 0  # tflite.Padding (VALID = 1: no padding)
ACTIVATIONS = (0, 1, 2, 3, 4)  # the fused activations `activation` knows


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """Internal layout -> TFLite layout: (B, C, H, W) -> (B, H, W, C); other ranks unchanged."""
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def from_nhwc(x: torch.Tensor) -> torch.Tensor:
    """TFLite layout -> internal layout: (B, H, W, C) -> (B, C, H, W); other ranks unchanged."""
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def activation(x: torch.Tensor, kind: int) -> torch.Tensor:
    """TFLite's fused activation (tflite.ActivationFunctionType): 0 none, 1 RELU, 2 RELU_N1_TO_1,
    3 RELU6, 4 TANH.

    In place: ``x`` is always the fresh result of the op the activation is fused into (whose
    backward does not need it), and a separate pass over memory costs a quarter of the CPU time.
    """
    if kind == 0:
        return x
    if kind == 1:
        return F.relu_(x)
    if kind == 2:
        return F.hardtanh_(x, -1.0, 1.0)
    if kind == 3:
        return F.hardtanh_(x, 0.0, 6.0)
    return x.tanh_()


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding (before, after) of one spatial dim: the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def constant(array: np.ndarray, rank: int) -> nn.Parameter:
    """A constant operand of an elementwise op with a ``rank``-D activation, broadcastable in the
    internal layout: a 4-D one (after padding to 4-D as NHWC broadcasting does) becomes NCHW."""
    value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if rank == 4:
        value = value.reshape((1,) * (4 - value.dim()) + tuple(value.shape)).permute(0, 3, 1, 2)
    return nn.Parameter(value.contiguous())


def const(graph: Graph, index: int) -> np.ndarray:
    """The constant data of tensor ``index`` (weights, pads, axes): a graph where an op reads an
    activation in such a slot is not one this port handles."""
    data = graph.tensors[index].data
    if data is None:
        raise FastMetroError(f"{graph.path}: tensor {graph.tensors[index].name!r} should be a constant")
    return data


def _bias(op: Operator, graph: Graph) -> torch.Tensor | None:
    """The op's optional third input (a bias vector), or None when absent."""
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return None
    return torch.from_numpy(const(graph, op.inputs[2]).astype(np.float32))


def _conv_weight(op: Operator, graph: Graph) -> tuple[torch.Tensor, int]:
    """TFLite's conv filter in torch's (O, I/groups, KH, KW) layout, and the number of groups."""
    channels = graph.tensors[op.inputs[0]].shape[3]
    weight = torch.from_numpy(np.asarray(const(graph, op.inputs[1]), dtype=np.float32))
    if op.op == "DEPTHWISE_CONV_2D":  # (1, KH, KW, C*M): output channel c*M + m reads channel c
        return weight.permute(3, 0, 1, 2).contiguous(), channels
    weight = weight.permute(0, 3, 1, 2).contiguous()  # (O, KH, KW, I)
    return weight, channels // weight.shape[1]


class Conv(nn.Module):
    """CONV_2D / DEPTHWISE_CONV_2D: (B, C, H, W) -> (B, O, H', W'), TFLite's padding and fused
    activation.

    TFLite's SAME padding puts the odd pixel of a stride-2 conv after (bottom/right), which
    nn.Conv2d cannot express: then an explicit F.pad runs first.
    """

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        o, shape = op.options, graph.tensors[op.inputs[0]].shape
        weight, groups = _conv_weight(op, graph)
        bias = _bias(op, graph)
        stride = (o["stride_h"], o["stride_w"])
        dilation = (o["dilation_h_factor"], o["dilation_w_factor"])
        pads = [(0, 0), (0, 0)]
        if o["padding"] == SAME:
            pads = [same_padding(shape[1 + i], weight.shape[2 + i], stride[i], dilation[i]) for i in (0, 1)]
        symmetric = all(before == after for before, after in pads)
        self.pad = None if symmetric else (*pads[1], *pads[0])
        self.conv = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            (weight.shape[2], weight.shape[3]),
            stride,
            (pads[0][0], pads[1][0]) if symmetric else 0,
            dilation,
            groups,
            bias=bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            if bias is not None:
                assert self.conv.bias is not None  # built with bias=True
                self.conv.bias.copy_(bias)
        self.act = o["fused_activation_function"]

    def can_absorb(self, pad: tuple[int, ...]) -> bool:
        """Whether a preceding PAD op's zero padding, F.pad order (left, right, top, bottom), can
        move into this conv: one without padding of its own, the pad symmetric per axis."""
        left, right, top, bottom = pad
        return self.pad is None and not any(self.conv.padding) and left == right and top == bottom

    def absorb_padding(self, pad: tuple[int, ...]) -> None:
        """Pad inside the conv (the same sums, without a padded copy of the feature map)."""
        assert self.can_absorb(pad)
        self.conv.padding = (pad[2], pad[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return activation(self.conv(x), self.act)


class Elementwise(nn.Module):
    """ADD (fused activation) and PRELU (x if x >= 0 else alpha * x); constant operands baked in."""

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        self.kind = op.op
        rank = len(graph.tensors[op.outputs[0]].shape)
        self.consts = nn.ParameterList()
        self.slots: list[int | None] = []  # per input: None (an activation, in call order) or an index into consts
        for index in op.inputs:
            if graph.tensors[index].data is None:
                self.slots.append(None)
            else:
                self.slots.append(len(self.consts))
                self.consts.append(constant(const(graph, index), rank))
        self.act = op.options.get("fused_activation_function", 0)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        activations = iter(xs)
        a, b = (next(activations) if slot is None else self.consts[slot] for slot in self.slots)
        if self.kind == "PRELU":
            return torch.where(a >= 0, a, a * b)
        return activation(a + b, self.act)


class Pad(nn.Module):
    """PAD with zeros; the NHWC paddings (rank, 2) mapped to F.pad's last-dim-first order.

    ``spatial`` is the (left, right, top, bottom) padding of a 4-D pad that leaves the batch and
    channel axes alone (one a following conv can absorb), else None."""

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        pads = const(graph, op.inputs[1]).reshape(-1, 2).tolist()
        if len(pads) == 4:
            pads = [pads[axis] for axis in (0, 3, 1, 2)]
        self.pad = tuple(p for before_after in reversed(pads) for p in before_after)
        self.spatial = self.pad[:4] if len(pads) == 4 and not any(self.pad[4:]) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class MaxPool(nn.Module):
    """MAX_POOL_2D; SAME padding pads with -inf (padded cells never win, as in TFLite)."""

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        o, shape = op.options, graph.tensors[op.inputs[0]].shape
        self.kernel = (o["filter_height"], o["filter_width"])
        self.stride = (o["stride_h"], o["stride_w"])
        self.pad = (0, 0, 0, 0)
        if o["padding"] == SAME:
            (top, bottom), (left, right) = (same_padding(shape[1 + i], self.kernel[i], self.stride[i]) for i in (0, 1))
            self.pad = (left, right, top, bottom)
        self.act = o["fused_activation_function"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, value=-math.inf)
        return activation(F.max_pool2d(x, self.kernel, self.stride), self.act)


class ResizeBilinear(nn.Module):
    """RESIZE_BILINEAR to the graph's static output size.

    half_pixel_centers is F.interpolate's align_corners=False (source clamped at 0 in both);
    align_corners is its align_corners=True. TF's legacy mode (neither: source = out * in/out,
    no clamping below) has no F.interpolate equivalent and is gathered by hand.
    """

    y0: torch.Tensor
    y1: torch.Tensor
    yw: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    xw: torch.Tensor

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        o = op.options
        _, h, w, _ = graph.tensors[op.inputs[0]].shape
        _, oh, ow, _ = graph.tensors[op.outputs[0]].shape
        self.size, self.align_corners = (oh, ow), bool(o["align_corners"])
        self.legacy = not o["align_corners"] and not o["half_pixel_centers"]
        if self.legacy:
            for axis, (n, m) in zip("yx", ((h, oh), (w, ow))):
                src = torch.arange(m, dtype=torch.float32) * (n / m)
                low = src.floor().long().clamp(max=n - 1)
                self.register_buffer(f"{axis}0", low, persistent=False)
                self.register_buffer(f"{axis}1", (low + 1).clamp(max=n - 1), persistent=False)
                self.register_buffer(f"{axis}w", src - src.floor(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.legacy:
            return F.interpolate(x, self.size, mode="bilinear", align_corners=self.align_corners)
        wy, wx = self.yw.view(-1, 1), self.xw
        top, bottom = x[:, :, self.y0], x[:, :, self.y1]
        top = top[..., self.x0] * (1 - wx) + top[..., self.x1] * wx
        bottom = bottom[..., self.x0] * (1 - wx) + bottom[..., self.x1] * wx
        return top * (1 - wy) + bottom * wy


class DepthToSpace(nn.Module):
    """DEPTH_TO_SPACE, TF's channel order: out[h*s+i, w*s+j, c] = in[h, w, (i*s + j)*C' + c].

    (torch's pixel_shuffle orders the input channels as c*s*s + i*s + j instead.)
    """

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        self.block = op.options["block_size"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.block
        x = x.reshape(b, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(b, c // (s * s), h * s, w * s)


class Reshape(nn.Module):
    """RESHAPE in TFLite's layout to the graph's static shape, the leading 1 (batch) becoming B."""

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        self.shape = list(graph.tensors[op.outputs[0]].shape)
        self.batched = graph.tensors[op.inputs[0]].shape[:1] == (1,) and self.shape[:1] == [1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[0]] + self.shape[1:] if self.batched else self.shape
        return from_nhwc(to_nhwc(x).reshape(shape))


class Concat(nn.Module):
    """CONCATENATION along TFLite's axis (mapped to NCHW for 4-D inputs), fused activation."""

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        rank = len(graph.tensors[op.outputs[0]].shape)
        axis = op.options["axis"] % rank
        self.axis = NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis
        self.act = op.options["fused_activation_function"]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return activation(torch.cat(xs, self.axis), self.act)


class Mean(nn.Module):
    """MEAN over TFLite's axes, on the NHWC view (so keep_dims=False squeezes as in TFLite)."""

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        rank = len(graph.tensors[op.inputs[0]].shape)
        self.axes = sorted({int(a) % rank for a in const(graph, op.inputs[1]).reshape(-1)})
        self.keep = bool(op.options["keep_dims"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_nhwc(to_nhwc(x).mean(dim=self.axes, keepdim=self.keep))


class FullyConnected(nn.Module):
    """FULLY_CONNECTED: the NHWC input flattened to (-1, K) (or kept to (..., K)) times W (N, K)."""

    def __init__(self, op: Operator, graph: Graph):
        super().__init__()
        if op.options["weights_format"] != 0:
            raise FastMetroError(f"{graph.path}: FULLY_CONNECTED with shuffled weights is not supported")
        weight = torch.from_numpy(const(graph, op.inputs[1]).astype(np.float32))  # (N, K)
        bias = _bias(op, graph)
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            if bias is not None:
                self.linear.bias.copy_(bias)
        self.keep = bool(op.options["keep_num_dims"])
        self.act = op.options["fused_activation_function"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_nhwc(x)
        x = x if self.keep else x.reshape(-1, self.linear.in_features)
        return from_nhwc(activation(self.linear(x), self.act))


class Logistic(nn.Module):
    """LOGISTIC: the sigmoid, elementwise (layout-free)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


_BUILDERS = {
    "ADD": Elementwise,
    "PRELU": Elementwise,
    "CONV_2D": Conv,
    "DEPTHWISE_CONV_2D": Conv,
    "PAD": Pad,
    "MAX_POOL_2D": MaxPool,
    "RESIZE_BILINEAR": ResizeBilinear,
    "DEPTH_TO_SPACE": DepthToSpace,
    "RESHAPE": Reshape,
    "CONCATENATION": Concat,
    "MEAN": Mean,
    "FULLY_CONNECTED": FullyConnected,
    "LOGISTIC": lambda op, graph: Logistic(),
}
# Ops whose inputs after the first (weights, shapes, paddings, axes) are read at build time.
_ONE_ACTIVATION = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "PAD", "RESIZE_BILINEAR", "RESHAPE", "MEAN"}
)


def build(op: Operator, graph: Graph) -> tuple[nn.Module, tuple[int, ...]]:
    """The module running ``op`` and the tensor indices of the activations its forward takes."""
    if op.options.get("fused_activation_function", 0) not in ACTIVATIONS:
        raise FastMetroError(
            f"{graph.path}: {op.op} with fused activation {op.options['fused_activation_function']} is not supported"
        )
    if op.op in _ONE_ACTIVATION:
        if any(graph.tensors[i].data is None for i in op.inputs[1:] if i >= 0):
            raise FastMetroError(
                f"{graph.path}: {op.op} with a computed (non-constant) weight or parameter tensor is not supported"
            )
        activations = op.inputs[:1]
    else:
        activations = tuple(i for i in op.inputs if i >= 0 and graph.tensors[i].data is None)
    try:
        module = _BUILDERS[op.op](op, graph)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise FastMetroError(f"{graph.path}: cannot build {op.op} ({type(error).__name__}: {error})") from None
    return module, activations
