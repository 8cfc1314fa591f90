"""CNN backbones from timm: images (B, 3, H, W) -> feature map (B, C, H/32, W/32).

The backbone is the timm model itself (``forward_features`` gives the last feature map), so its
parameter names are timm's: for HRNet-W64 they equal the released checkpoints' ``backbone.*``
names; for ResNets they map one-to-one onto the torchvision ``nn.Sequential`` indices the
release uses (see :mod:`fastmetro.model.checkpoint`).

No weights are ever downloaded: ``pretrained=True`` uses timm's weights only if they are already
in the local Hugging Face cache, and ``load_backbone_weights`` reads a local file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.model.blazepose_backbone import BLAZEPOSE_BACKBONES, BlazePoseBackbone
from fastmetro.model_files import read_state_dict


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone choice of the presets (``R50`` in ``FastMETRO-S-R50``): timm's model name, whether
    the checkpoint keeps the classifier head, and the pretrained tag of timm's weights."""

    timm_name: str
    keeps_classifier: bool
    pretrained_tag: str


BACKBONES = {
    "R18": BackboneSpec("resnet18", False, "tv_in1k"),
    "R34": BackboneSpec("resnet34", False, "tv_in1k"),
    # torchvision's ImageNet weights, as the release uses.
    "R50": BackboneSpec("resnet50", False, "tv_in1k"),
    # The released HRNet-W64 keeps its unused 2048->1000 classifier (in checkpoints and counts).
    "H64": BackboneSpec("hrnet_w64", True, "ms_in1k"),
    # MediaPipe's BlazePose GHUM landmark encoders, pretrained on real people (256 px crops; their
    # weights come with the architecture from the fetched asset: see blazepose_backbone).
    "BPL": BackboneSpec("blazepose_lite", False, "mediapipe"),
    "BPF": BackboneSpec("blazepose_full", False, "mediapipe"),
    "BPH": BackboneSpec("blazepose_heavy", False, "mediapipe"),
}


def build_backbone(
    name: str,
    keep_classifier: bool = False,
    pretrained: bool = False,
    pretrained_tag: str | None = None,
) -> nn.Module:
    """Create a timm model whose ``forward_features`` is the backbone.

    Args:
        name: timm architecture name (``resnet50``, ``hrnet_w64``, ``resnet18``...).
        keep_classifier: keep the (unused) classification layer, as the released HRNet-W64 does
            (it is in the checkpoints and in the paper's parameter count).
        pretrained: load ImageNet weights from the local cache (never downloads).
        pretrained_tag: timm pretrained tag (e.g. ``tv_in1k``: torchvision's weights, as released).
    """
    if name in BLAZEPOSE_BACKBONES:  # always pretrained: the .tflite file is the architecture
        return BlazePoseBackbone(BLAZEPOSE_BACKBONES[name])
    import timm

    kwargs: dict[str, Any] = {} if keep_classifier else {"num_classes": 0, "global_pool": ""}
    weights = cached_pretrained_file(name, pretrained_tag) if pretrained else None  # fail before building
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as error:  # timm: "Unknown model (...)"
        raise FastMetroError(f"unknown backbone {name!r}: {error}") from None
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def backbone_channels(backbone: nn.Module) -> int:
    """Channels of ``forward_features``' output (timm's ``num_features``; HRNet-W64: 2048)."""
    return int(backbone.num_features)  # type: ignore[arg-type]  # timm models' int attribute


def cached_pretrained_file(name: str, tag: str | None = None) -> Path:
    """Path of timm's ImageNet weights for ``name`` in the local Hugging Face cache.

    Raises a one-line :class:`FastMetroError` if they are not cached (this never touches the
    network, so it cannot hang offline).
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    full_name = f"{name}.{tag}" if tag else name
    try:
        config = timm.models.get_pretrained_cfg(full_name)
    except Exception:  # noqa: BLE001 (timm raises various types for unknown tags)
        config = None
    hub_id = getattr(config, "hf_hub_id", None) if config is not None else None
    candidates = []
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                candidates.append(Path(found))
    if not candidates:
        where = f"Hugging Face hub '{hub_id}'" if hub_id else "timm"
        raise FastMetroError(
            f"{full_name}: ImageNet weights are not in the local cache ({where}) and fastmetro never "
            "downloads; pass backbone_weights=PATH (a local .safetensors/.pth) or pretrained=False"
        )
    return candidates[0]


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load local ImageNet weights (timm or torchvision names) into a timm backbone.

    Entries of a classification head the backbone does not have (``fc.*`` for a ResNet built
    without its head) are skipped; anything else missing, unexpected or mis-shaped is an error.
    """
    path = Path(path)
    state = read_state_dict(path, "backbone weights")
    expected = backbone.state_dict()
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or "fc"
    unexpected = [k for k in state if k not in expected and not k.startswith(f"{classifier}.")]
    missing = [k for k in expected if k not in state]
    if missing or unexpected:
        problem = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise FastMetroError(
            f"{path}: backbone weights do not match the {type(backbone).__name__} backbone: {problem} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise FastMetroError(
                f"{path}: backbone key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    backbone.load_state_dict({k: state[k] for k in expected}, strict=True)
