"""BlazePose GHUM's landmark network, cut before its regression head, as a pretrained backbone.

MediaPipe's pose landmark networks (Apache-2.0, fetched by ``fastmetro assets fetch``) were
trained on real people. Their encoder-decoder ends in an 8x8 map (256 px input, stride 32) that
the regression head then pools to 4x4, 2x2 and 1x1 for the 39 landmarks. That 8x8 map is the
backbone's output here: 64 image tokens that already encode where the body's parts are, the free
stand-in for the ImageNet backbones of the paper (which cannot be downloaded here).

The architecture comes from the ``.tflite`` file itself (:func:`fastmetro.mediapipe.graph.subgraph`),
so building this backbone needs the asset; its weights are ``nn.Parameter`` s like any other (they
travel in checkpoints and can be fine-tuned).
"""

from __future__ import annotations

import torch
from torch import nn

from fastmetro.conventions import IMAGENET_MEAN, IMAGENET_STD
from fastmetro.errors import FastMetroError
from fastmetro.mediapipe.assets import asset_path
from fastmetro.mediapipe.graph import TFLiteNet, subgraph
from fastmetro.mediapipe.networks import POSE_LANDMARK_VARIANTS
from fastmetro.mediapipe.tflite_reader import read_tflite

#: Backbone names (the ``backbone`` field of a config) -> landmark network variant.
BLAZEPOSE_BACKBONES = {f"blazepose_{variant}": variant for variant in POSE_LANDMARK_VARIANTS}


def head_input_name(net_graph) -> str:
    """Name of the map the regression head reads: the input of the first op whose output is at
    1/64 of the input side (the head's first stride-2 step, 8x8 -> 4x4 at 256 px)."""
    _, height, _, _ = net_graph.tensors[net_graph.inputs[0]].shape
    for op in net_graph.operators:
        shape = net_graph.tensors[op.outputs[0]].shape
        if len(shape) == 4 and shape[1] == height // 64:
            source = net_graph.tensors[op.inputs[0]]
            if len(source.shape) == 4 and source.shape[1] == height // 32:
                return source.name
    raise FastMetroError(f"{net_graph.path}: no 1/32-resolution map feeds a 1/64 one (not a pose landmark network?)")


class BlazePoseBackbone(nn.Module):
    """``forward_features(images)``: (B, 3, 256, 256) ImageNet-normalised RGB, like every backbone
    here -> (B, C, 8, 8) (C = 288 for ``full``). ``num_features`` is C, as on timm models.

    The landmark network itself reads RGB in [0, 1]; the normalisation is undone first, so data
    pipelines, predictors and specs stay the same for every backbone.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, variant: str = "full"):
        super().__init__()
        if variant not in POSE_LANDMARK_VARIANTS:
            raise FastMetroError(f"unknown BlazePose variant {variant!r}: use one of {POSE_LANDMARK_VARIANTS}")
        self.variant = variant
        graph = read_tflite(asset_path(f"pose_landmark_{variant}"))
        self.feature_name = head_input_name(graph)
        self.net = TFLiteNet(subgraph(graph, self.feature_name))
        _, channels, height, width = self.net.feature_shapes()[self.feature_name]
        self.num_features = int(channels)
        self.feature_size = (int(height), int(width))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.net.input_size

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, *size):
            raise FastMetroError(
                f"BlazePose {self.variant} backbone: expected images (B, 3, {size[0]}, {size[1]}), "
                f"got {tuple(images.shape)}"
            )
        # Channels-last: its depthwise convolutions run 2.7x faster on the CPU (measured, batch 32).
        unit_range = (images * self.std + self.mean).contiguous(memory_format=torch.channels_last)
        _, features = self.net(unit_range.permute(0, 2, 3, 1), features=(self.feature_name,))
        return features[self.feature_name]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, features={self.num_features}x{self.feature_size[0]}x{self.feature_size[1]}"
