"""CUDA graphs for the fast inference path: batch-1 GPU latency without per-kernel launch cost.

:class:`CUDAGraphModel` wraps an inference view (:func:`fastmetro.model.fast.prepare_for_inference`)
and, per (input shape, dtype, device, ``return_attention``), warms the view up on a side stream
(which fills every cache: masks, positional projections, the first-layer memo, the folded
backbone), captures one forward into a :class:`torch.cuda.CUDAGraph`, and afterwards replays it:
copy the images into the captured input, replay, return copies of the captured outputs.

Captured graphs hold the weights and caches as they were at capture time: after changing the
weights call :meth:`CUDAGraphModel.reset`. Anything else than CUDA inputs with gradients off in
eval mode runs the view directly. (Written for GPUs; not run on the CPU-only development machine.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(item) for item in value)
    return value


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    images: torch.Tensor
    outputs: dict


class CUDAGraphModel(nn.Module):
    """See the module docstring. ``view``: an inference view on a CUDA device."""

    def __init__(self, view: nn.Module, warmup: int = 3):
        super().__init__()
        self.__dict__["view"] = view  # not a submodule: state-dict names stay the view's
        self.warmup = int(warmup)
        self._graphs: dict[tuple, _Captured] = {}

    def reset(self) -> None:
        """Forget every captured graph (after the weights changed)."""
        self._graphs.clear()

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["view"], name)

    def _capture(self, images: torch.Tensor, return_attention: bool) -> _Captured:
        static = images.clone()
        side = torch.cuda.Stream(device=images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(max(self.warmup, 1)):
                self.view(static, return_attention=return_attention)
        torch.cuda.current_stream(images.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.view(static, return_attention=return_attention)
        return _Captured(graph, static, outputs)

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        if not images.is_cuda or torch.is_grad_enabled() or self.view.training:
            return self.view(images, return_attention=return_attention)
        key = (tuple(images.shape), images.dtype, str(images.device), bool(return_attention))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(images, return_attention)
        captured.images.copy_(images)
        captured.graph.replay()
        return _clone(captured.outputs)
