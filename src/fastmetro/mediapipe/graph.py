"""A ``.tflite`` network as a ``torch.nn.Module``: same numbers as LiteRT, batched, trainable.

:class:`TFLiteNet` runs the ops of :func:`~fastmetro.mediapipe.tflite_reader.read_tflite`'s graph
in order with the modules of :mod:`fastmetro.mediapipe.ops` (nn.Conv2d, nn.Linear, ...; weights
are nn.Parameters, so ``state_dict()``, ``.to(device)`` and gradients work). Inputs and outputs
use TFLite's NHWC layout; inside, 4-D activations are NCHW and any of them can be returned as a
backbone feature map by its TFLite tensor name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe import ops
from fastmetro.mediapipe.tflite_reader import Graph, read_tflite


def subgraph(graph: Graph, output_name: str) -> Graph:
    """The part of ``graph`` that computes the tensor ``output_name``: its ancestor ops only, in
    order, with that tensor as the one output (a backbone cut from a landmark network)."""
    index = next((i for i, tensor in enumerate(graph.tensors) if tensor.name == output_name), None)
    if index is None:
        raise FastMetroError(f"{graph.path}: no tensor named {output_name!r}")
    needed, kept = {index}, []
    for op in reversed(graph.operators):
        if any(out in needed for out in op.outputs):
            kept.append(op)
            needed.update(i for i in op.inputs if i >= 0)
    kept.reverse()
    return Graph(graph.path, graph.tensors, kept, graph.inputs, (index,))


def _fold_pads(layers: list[nn.Module], wiring: list, outputs: Sequence[int]) -> list:
    """Wiring in which a spatial zero PAD read only by convs that can absorb it is skipped: the
    convs pad inside oneDNN and read the PAD's input (its copy of a large feature map took a
    third of a landmark pass's time). The PAD step stays, for ``features=`` by its tensor name."""
    readers: dict[int, list[int]] = {}
    for step, (inputs, _) in enumerate(wiring):
        for index in inputs:
            readers.setdefault(index, []).append(step)
    wiring = list(wiring)
    for step, layer in enumerate(layers):
        pad_out = wiring[step][1]
        if not isinstance(layer, ops.Pad) or layer.spatial is None or pad_out in outputs:
            continue
        convs = [layers[r] for r in readers.get(pad_out, [])]
        if not convs or not all(isinstance(conv, ops.Conv) and conv.can_absorb(layer.spatial) for conv in convs):
            continue
        for r, conv in zip(readers[pad_out], convs):
            assert isinstance(conv, ops.Conv)  # checked above
            conv.absorb_padding(layer.spatial)
            inputs, out = wiring[r]
            wiring[r] = (tuple(wiring[step][0][0] if i == pad_out else i for i in inputs), out)
    return wiring


class TFLiteNet(nn.Module):
    """One single-input TFLite network (MediaPipe's pose / palm / hand detectors and landmarkers).

    ``net(images)`` with images (B, H, W, 3) float32 NHWC, normalised as the network expects,
    returns a tuple of the graph's outputs in order, shapes as in the graph but with batch B
    (4-D outputs in NHWC, as LiteRT gives them). ``net(images, features=names)`` returns
    ``(outputs, {name: tensor})`` with 4-D intermediate tensors in NCHW.
    """

    def __init__(self, graph: Graph):
        super().__init__()
        self.path = graph.path
        tensors = graph.tensors
        self._input = graph.inputs[0]
        self._outputs = tuple(graph.outputs)
        layers, wiring = [], []
        for op in graph.operators:
            module, activations = ops.build(op, graph)
            layers.append(module)
            wiring.append((activations, op.outputs[0]))
        self.layers = nn.ModuleList(layers)
        self._wiring = _fold_pads(layers, wiring, graph.outputs)
        self._names = {tensors[self._input].name: self._input}
        self._names.update({tensors[out].name: out for _, out in wiring})
        self._shapes = {index: tensors[index].shape for index in self._names.values()}
        self._check_order(graph)
        self._last_use = self._last_uses()
        self._needed: dict[frozenset[int], frozenset[int]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> TFLiteNet:
        """The network in ``path``: eval mode, float32, CPU (FastMetroError if unreadable)."""
        return cls(read_tflite(path)).eval()

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the input image."""
        _, h, w, _ = self._shapes[self._input]
        return int(h), int(w)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's output tensor names, in the order ``forward`` returns them."""
        index_to_name = {index: name for name, index in self._names.items()}
        return tuple(index_to_name[index] for index in self._outputs)

    def feature_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """{tensor name: (1, C, H, W)} of every 4-D activation an op computes (outputs included),
        in execution order: the names ``features=`` accepts for backbone feature maps."""
        shapes = {}
        for name, index in self._names.items():
            shape = self._shapes[index]
            if index != self._input and len(shape) == 4:
                shapes[name] = (shape[0], shape[3], shape[1], shape[2])
        return shapes

    def forward(self, images: torch.Tensor, features: Sequence[str] | None = None, skip: Sequence[int] = ()):
        """images (B, H, W, 3) -> outputs tuple [, {feature name: (B, C, H, W) tensor if 4-D}].

        ``skip``: positions of outputs not wanted; they come back as None and the ops only they
        need do not run (a landmark network's segmentation decoder, when only landmarks count)."""
        self._check_images(images)
        wanted = self._feature_indices(features)
        outputs_kept = tuple(index for position, index in enumerate(self._outputs) if position not in set(skip))
        keep = set(outputs_kept) | set(wanted.values())
        needed = self._needed_steps(frozenset(keep))
        env = {self._input: images.permute(0, 3, 1, 2)}
        for step, (layer, (inputs, output)) in enumerate(zip(self.layers, self._wiring)):
            if step not in needed:
                continue
            env[output] = layer(*(env[i] for i in inputs))
            for index in inputs:  # free activations nobody reads any more (memory at large B)
                if self._last_use[index] == step and index not in keep:
                    del env[index]
        outputs = tuple(ops.to_nhwc(env[i]).contiguous() if i in outputs_kept else None for i in self._outputs)
        if features is None:
            return outputs
        return outputs, {name: env[index] for name, index in wanted.items()}

    def _needed_steps(self, targets: frozenset[int]) -> frozenset[int]:
        """The steps whose results ``targets`` (tensor indices) depend on (cached per target set)."""
        if targets not in self._needed:
            needed, steps = set(targets), set()
            for step in range(len(self._wiring) - 1, -1, -1):
                inputs, output = self._wiring[step]
                if output in needed:
                    steps.add(step)
                    needed.update(inputs)
            self._needed[targets] = frozenset(steps)
        return self._needed[targets]

    def _feature_indices(self, features: Sequence[str] | None) -> dict[str, int]:
        if features is None:
            return {}
        if isinstance(features, str):
            features = (features,)
        missing = [name for name in features if name not in self._names]
        if missing:
            raise FastMetroError(
                f"{self.path}: no activation tensor named {missing[0]!r} (see TFLiteNet.feature_shapes() for the names)"
            )
        return {name: self._names[name] for name in features}

    def _check_images(self, images: torch.Tensor) -> None:
        _, h, w, c = self._shapes[self._input]
        if not isinstance(images, torch.Tensor):
            raise FastMetroError(f"{self.path.name}: expected a torch.Tensor of images, got {type(images).__name__}")
        if images.dim() != 4 or tuple(images.shape[1:]) != (h, w, c):
            shape = tuple(images.shape)
            raise FastMetroError(
                f"{self.path.name}: expected images of shape (B, {h}, {w}, {c}) (NHWC float32), got {shape}"
            )

    def _check_order(self, graph: Graph) -> None:
        """Every activation an op reads is the input or computed by an earlier op."""
        ready = {self._input}
        for op, (inputs, output) in zip(graph.operators, self._wiring):
            for index in inputs:
                if index not in ready:
                    raise FastMetroError(
                        f"{graph.path}: {op.op} reads {graph.tensors[index].name!r} before any op computes it"
                    )
            ready.add(output)
        for index in self._outputs:
            if index not in ready:
                raise FastMetroError(f"{graph.path}: output {graph.tensors[index].name!r} is not computed by the graph")

    def _last_uses(self) -> dict[int, int]:
        """{tensor index: step of the last op reading it}."""
        last = {}
        for step, (inputs, _) in enumerate(self._wiring):
            for index in inputs:
                last[index] = step
        return last

    def extra_repr(self) -> str:
        return f"{self.path.name!r}, input_size={self.input_size}, outputs={len(self._outputs)}"
