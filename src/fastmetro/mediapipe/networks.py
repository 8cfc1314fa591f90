"""The MediaPipe networks as ready PyTorch modules: one loader, one cached copy per device."""

from __future__ import annotations

import threading

import torch

from fastmetro.mediapipe.assets import asset_path
from fastmetro.mediapipe.graph import TFLiteNet

#: Landmark network variants (BlazePose GHUM 3D: lite / full / heavy; hands: lite / full).
POSE_LANDMARK_VARIANTS = ("lite", "full", "heavy")
HAND_LANDMARK_VARIANTS = ("lite", "full")

_cache: dict[tuple[str, str], torch.nn.Module] = {}
_lock = threading.Lock()


def load_network(name: str, device: str | torch.device = "cpu"):
    """The asset ``name`` (e.g. ``"pose_detection"``, ``"pose_landmark_full"``) as a
    :class:`~fastmetro.mediapipe.graph.TFLiteNet` in eval mode on ``device``, loaded once per process.

    Raises:
        FastMetroError: the file is missing or damaged (one line naming ``fastmetro assets fetch``).
    """
    key = (name, str(torch.device(device)))
    with _lock:
        if key not in _cache:
            net = TFLiteNet.from_file(asset_path(name)).to(device).eval()
            for parameter in net.parameters():
                parameter.requires_grad_(False)  # a detector: never trained through here
            _cache[key] = net
        return _cache[key]


__all__ = ["load_network", "POSE_LANDMARK_VARIANTS", "HAND_LANDMARK_VARIANTS"]
