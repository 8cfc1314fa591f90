"""The fast path's backbone: a derived copy of ``backbone.forward_features`` built for inference.

:class:`ChannelsLastBackbone` runs, on channels-last images, a copy of the backbone made by:

1. :func:`fold_batchnorm`: torch.fx traces ``forward_features`` and folds every eval-mode
   BatchNorm into the convolution before it (one fewer pass over every activation);
2. on CPU in fp32, :func:`fuse_convolutions`: every convolution becomes one oneDNN call with its
   weight re-ordered into the blocked layout oneDNN picks for the input shape (the last two shapes
   kept), fused with the ReLU that follows it, or
   with the residual addition and the ReLU that follow it (ResNet/HRNet blocks). This is what
   TorchInductor's CPU freezing does, here without compiling. The fused copy is checked against
   the unfused one once when it is built and dropped (with a warning) if it differs or fails;
3. or, with ``compile=True``, ``torch.compile`` of the folded copy (TorchInductor with weight
   freezing does its own fusion and packing; the first call of each input shape compiles).

The copy is rebuilt when any parameter or buffer of the backbone changes (storage, shape or
in-place version), so it never goes stale; it costs one copy of the backbone's weights (on CPU,
plus a packed copy for each of the last two input shapes). Under
autocast (bf16/fp16) the folded, unfused copy runs, so autocast can pick the convolutions' dtype.
A backbone torch.fx cannot trace runs unfolded, channels-last, with the shared weights.
"""

from __future__ import annotations

import operator
import warnings
from typing import TypeGuard, cast

import torch
from torch import fx, nn

from fastmetro.model.fast_transformer import _fingerprint


class _Features(nn.Module):
    """``backbone.forward_features`` as a module's forward (what torch.fx traces)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images)  # type: ignore[operator]  # a timm model's method


def fold_batchnorm(backbone: nn.Module) -> fx.GraphModule | None:
    """A copy of ``backbone.forward_features`` (eval mode) with each BatchNorm that directly
    follows a convolution folded into it; None if the model cannot be traced by torch.fx."""
    from torch.fx.experimental.optimization import fuse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cast(fx.GraphModule, fuse(_Features(backbone).eval()))  # torch annotates it nn.Module
    except Exception:  # noqa: BLE001 (fx raises many types for untraceable code)
        return None


class OneDNNConv2d(nn.Module):
    """conv2d(x) [+ other] [-> ReLU] as one oneDNN call with a pre-packed weight (CPU, fp32).

    oneDNN's best blocked weight layout depends on the input shape (batch and spatial size): a
    weight packed without it is re-ordered on every call into the layout the convolution picks
    (measured, S-R50, batch 1, 2 threads: 48 of the backbone's 94 ms went to such re-orders). So
    the weight is packed for each input shape it meets, keeping the last :attr:`PACKED_SHAPES`.
    """

    PACKED_SHAPES = 2  # each packed copy costs one copy of the weight

    def __init__(self, conv: nn.Conv2d, relu: bool, add: bool):
        super().__init__()
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.register_buffer("weight", conv.weight.detach(), persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach(), persistent=False)
        self.unary = "relu" if relu else "none"
        self.add = add
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def packed_weight(self, shape: torch.Size) -> torch.Tensor:
        """The weight in the blocked layout oneDNN picks for inputs of ``shape`` (cached)."""
        key = tuple(shape)
        packed = self._packed.pop(key, None)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(self.weight, *self.geometry, list(key))
        self._packed[key] = packed  # most recently used last
        while len(self._packed) > self.PACKED_SHAPES:
            del self._packed[next(iter(self._packed))]
        return packed

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.packed_weight(x.shape)
        if not self.add:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *self.geometry, self.unary, [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, self.bias, *self.geometry, "add", None,
            None if self.unary == "none" else self.unary, [], "",
        )  # fmt: skip


def _module(graph_module: fx.GraphModule, node: fx.Node, kind) -> bool:
    return node.op == "call_module" and isinstance(graph_module.get_submodule(cast(str, node.target)), kind)


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_relu(graph_module: fx.GraphModule, node: fx.Node | None) -> bool:
    if node is None:
        return False
    return _module(graph_module, node, nn.ReLU) or (
        node.op == "call_function" and node.target in (torch.relu, nn.functional.relu)
    )


def _is_add(node: fx.Node | None) -> TypeGuard[fx.Node]:
    return node is not None and node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)


def fuse_convolutions(graph_module: fx.GraphModule) -> int:
    """Replace every plain Conv2d of ``graph_module`` by :class:`OneDNNConv2d`, fused with a
    following ReLU or residual add (+ ReLU) where the graph allows; returns how many convs."""
    count = 0
    for node in list(graph_module.graph.nodes):
        if not _module(graph_module, node, nn.Conv2d):
            continue
        conv = graph_module.get_submodule(node.target)
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        user = _only_user(node)
        while user is not None and _module(graph_module, user, nn.Identity):
            user = _only_user(user)
        args: tuple
        args, relu, add, last = (node.args[0],), False, False, node
        if _is_relu(graph_module, user):
            relu, last = True, user
        elif _is_add(user) and len(user.args) == 2 and user.args[0] is not user.args[1] and node in user.args:
            other = user.args[1] if user.args[0] is node else user.args[0]
            add, args, last = True, (node.args[0], other), user
            if _is_relu(graph_module, _only_user(user)):
                relu, last = True, _only_user(user)
        name = f"onednn_{count}"
        graph_module.add_submodule(name, OneDNNConv2d(conv, relu, add))
        with graph_module.graph.inserting_before(last):
            fused = graph_module.graph.call_module(name, args)
        last.replace_all_uses_with(fused)
        count += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return count


def _validated_fusion(folded: fx.GraphModule) -> fx.GraphModule | None:
    """A fused copy of ``folded`` if it computes the same function on a test input, else None."""
    import copy

    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return None
    try:
        shared = {id(t): t for t in [*folded.parameters(), *folded.buffers()]}  # the fused copy keeps no 2nd weight
        fused = copy.deepcopy(folded, shared)
        if not fuse_convolutions(fused):
            return None
        sample = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        sample = sample.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):  # built from inside an autocast region too
            expected, got = folded(sample), fused(sample)
        tolerance = 1e-4 * float(expected.abs().max())
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=tolerance):
            return fused
        warnings.warn(
            "fast path: fused oneDNN backbone differs from the folded one; using the folded one", stacklevel=2
        )
    except Exception as error:  # noqa: BLE001 (internal oneDNN ops: fall back rather than fail)
        warnings.warn(f"fast path: oneDNN convolution fusion failed ({error}); using the folded backbone", stacklevel=2)
    return None


class ChannelsLastBackbone:
    """Runs a backbone's ``forward_features`` from a derived copy (see the module docstring)."""

    def __init__(self, backbone: nn.Module, fold: bool = True, compile: bool = False):
        self.backbone, self.fold, self.compile = backbone, fold, compile
        self._key: tuple | None = None
        self._runners: dict[str, nn.Module] = {}

    def _build(self, device: torch.device) -> dict[str, nn.Module]:
        folded = fold_batchnorm(self.backbone) if self.fold else None
        if folded is None:
            return {"exact": _Features(self.backbone), "autocast": _Features(self.backbone)}
        folded = folded.to(memory_format=torch.channels_last)
        if self.compile:  # TorchInductor does its own fusion and weight packing (freezing)
            compiled = cast(nn.Module, torch.compile(folded, options={"freezing": True}))  # an OptimizedModule
            return {"exact": compiled, "autocast": compiled}
        runners: dict[str, nn.Module] = {"exact": folded, "autocast": folded}
        if device.type == "cpu":
            runners["exact"] = _validated_fusion(folded) or folded
        return runners

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        key = _fingerprint(list(self.backbone.parameters()) + list(self.backbone.buffers()))
        if key != self._key:
            self._runners, self._key = self._build(images.device), key
        autocast = torch.is_autocast_enabled(images.device.type) or images.dtype != torch.float32
        runner = self._runners["autocast" if autocast else "exact"]
        return runner(images.contiguous(memory_format=torch.channels_last))
