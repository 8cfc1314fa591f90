"""Checkpoints: our format (safetensors + JSON), official ``*_state_dict.bin`` files, conversion.

Our format is two files side by side:

- ``NAME.safetensors``: the model's ``state_dict`` (released names; see below);
- ``NAME.json``: ``{"format", "version", "name", "flavor", "task", "overrides", "config",
  "topology": {"name", "level_vertex_counts", "num_joints"}}``, enough to rebuild the model.

Official checkpoints are read with ``torch.load(weights_only=True)``. Their names equal ours
except the ResNet backbone, which the release stores as a torchvision ``nn.Sequential``
(``backbone.0`` conv1, ``backbone.1`` bn1, ``backbone.4..7`` layer1..layer4) and we as timm's
``backbone.conv1`` ... ``backbone.layer4``. HRNet-W64 names are identical (timm's HRNet is the
official classification HRNet). Loading is strict: every missing, unexpected or mis-shaped key is
an error naming it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_save, atomic_write
from fastmetro.model.backbone import read_state_dict

FORMAT = "fastmetro-checkpoint"
VERSION = 1

# torchvision ResNet Sequential index (as released) <-> timm ResNet module name.
_RESNET_OFFICIAL_TO_OURS = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_RESNET_OURS_TO_OFFICIAL = {ours: official for official, ours in _RESNET_OFFICIAL_TO_OURS.items()}
_SEQUENTIAL_BACKBONE_KEY = re.compile(r"^backbone\.(\d+)\.(.*)$")
_RESNET_BACKBONE_KEY = re.compile(r"^backbone\.(conv1|bn1|layer[1-4])\.(.*)$")


@dataclass
class LoadedCheckpoint:
    """A state dict in our names, with our JSON config if there was one."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: dict | None  # our JSON, or None for official / bare files
    flavor: str | None  # inferred from the layer names when there is no JSON

    @property
    def num_joints(self) -> int | None:
        embedding = self.state_dict.get("joint_token_embed.weight")
        return None if embedding is None else int(embedding.shape[0])

    @property
    def num_coarse_vertices(self) -> int | None:
        embedding = self.state_dict.get("vertex_token_embed.weight")
        return None if embedding is None else int(embedding.shape[0])


def json_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).with_suffix(".json")


def official_to_fastmetro(state_dict: dict[str, torch.Tensor], source: str = "<state dict>") -> dict:
    """Rename an official state dict to our names (ResNet backbone indices -> timm names)."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")  # saved from a DistributedDataParallel wrapper
        match = _SEQUENTIAL_BACKBONE_KEY.match(key)
        if match:
            if match.group(1) not in _RESNET_OFFICIAL_TO_OURS:
                raise FastMetroError(f"{source}: unexpected backbone key {key!r} (not a ResNet layer index)")
            key = f"backbone.{_RESNET_OFFICIAL_TO_OURS[match.group(1)]}.{match.group(2)}"
        out[key] = value
    return out


def fastmetro_to_official(state_dict: dict[str, torch.Tensor]) -> dict:
    """Inverse of :func:`official_to_fastmetro`: ResNet backbones back to Sequential indices
    (HRNet and all other names are unchanged)."""
    # HRNet also has conv1/bn1/layer1; only a ResNet has layer4.
    is_resnet = any(key.startswith("backbone.layer4.") for key in state_dict)
    out = {}
    for key, value in state_dict.items():
        match = _RESNET_BACKBONE_KEY.match(key) if is_resnet else None
        if match:
            key = f"backbone.{_RESNET_OURS_TO_OFFICIAL[match.group(1)]}.{match.group(2)}"
        out[key] = value
    return out


def infer_flavor(state_dict: dict) -> str | None:
    if "dim_reduce_enc_cam.weight" in state_dict:
        return "release"
    if "dim_reduce_enc.weight" in state_dict:
        return "paper"
    return None


def _read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FastMetroError(f"{path}: not a readable JSON checkpoint config ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "name" not in config:
        raise FastMetroError(f"{path}: not a fastmetro checkpoint config (format must be {FORMAT!r})")
    return config


def read_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read our safetensors (+ JSON) or an official ``.bin``; names are mapped to ours."""
    path = Path(path)
    state_dict = official_to_fastmetro(read_state_dict(path), str(path))
    config = _read_json(json_path(path)) if path.suffix == ".safetensors" and json_path(path).is_file() else None
    flavor = config["flavor"] if config else infer_flavor(state_dict)
    return LoadedCheckpoint(path, state_dict, config, flavor)


def check_state_dict(expected: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line FastMetroError naming the first missing, unexpected or mis-shaped key."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing:
        raise FastMetroError(
            f"{source}: missing key {missing[0]!r} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    if unexpected:
        raise FastMetroError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
    for key, reference in expected.items():
        value = state_dict[key]
        if tuple(value.shape) != tuple(reference.shape):
            raise FastMetroError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(reference.shape)}"
            )
        if value.dtype.is_floating_point != reference.dtype.is_floating_point:
            raise FastMetroError(f"{source}: key {key!r} has dtype {value.dtype}, the model expects {reference.dtype}")


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor of ``state_dict`` into ``model``; keys and shapes must match exactly."""
    expected = model.state_dict()
    check_state_dict(expected, state_dict, source)
    model.load_state_dict({key: state_dict[key].to(expected[key].dtype) for key in expected}, strict=True)


def check_topology(loaded: LoadedCheckpoint, topology) -> None:
    """The checkpoint's joint/vertex token counts (and saved sizes) must fit the topology."""
    problems = []
    if loaded.num_joints is not None and loaded.num_joints != topology.num_joints:
        problems.append(f"{loaded.num_joints} joint tokens, topology has {topology.num_joints} joints")
    if loaded.num_coarse_vertices is not None and loaded.num_coarse_vertices != topology.num_coarse_vertices:
        problems.append(
            f"{loaded.num_coarse_vertices} vertex tokens, topology has {topology.num_coarse_vertices} coarse vertices"
        )
    saved = (loaded.config or {}).get("topology", {}).get("level_vertex_counts")
    if saved is not None and tuple(saved) != tuple(topology.level_vertex_counts):
        problems.append(f"mesh levels {tuple(saved)}, topology has {tuple(topology.level_vertex_counts)}")
    if problems:
        raise FastMetroError(f"{loaded.path}: checkpoint does not fit topology '{topology.name}': " + "; ".join(problems))


def checkpoint_config(model, name: str, flavor: str, overrides: dict | None = None, topology_name: str | None = None) -> dict:
    from fastmetro.model.presets import task_of

    topology = model.topology
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "flavor": flavor,
        "task": task_of(topology),
        "overrides": _jsonable(overrides or {}),
        "config": _jsonable(model.config.to_dict()),
        "topology": {
            "name": topology_name or topology.name,
            "level_vertex_counts": list(model.level_vertex_counts),
            "num_joints": model.num_joints,
        },
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict) -> Path:
    """Atomically write ``path`` (safetensors) and its JSON sibling."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise FastMetroError(f"{path}: our checkpoints are .safetensors files")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "name": config["name"]}))
    with atomic_write(json_path(path), "w") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    return path


def save_checkpoint(model, path: str | os.PathLike, name: str | None = None, flavor: str | None = None) -> Path:
    """Save a model built by :func:`~fastmetro.model.presets.create_model` in our format."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    name = name or getattr(model, "preset_name", None)
    flavor = flavor or getattr(model, "flavor", None)
    if name is None or flavor is None:
        raise FastMetroError(f"{path}: cannot save: the model has no preset name/flavor (build it with create_model)")
    config = checkpoint_config(model, name, flavor, getattr(model, "overrides", {}))
    return write_checkpoint(path, model.state_dict(), config)


def convert_official(
    source: str | os.PathLike,
    target: str | os.PathLike,
    model_name: str,
    hand: bool = False,
    flavor: str | None = None,
) -> dict:
    """Convert an official ``*_state_dict.bin`` into our safetensors + JSON.

    The model is built on the meta device with the built-in mesh sizes (SMPL body or MANO hand;
    parameters depend only on sizes), so this is fast even for HRNet-W64. Returns the JSON config.
    """
    from fastmetro.model.presets import build_on_meta, canonical_name, model_config, sized_topology

    loaded = read_checkpoint(source)
    flavor = flavor or loaded.flavor or "release"
    name = canonical_name(model_name)
    task = "hand" if hand else "body"
    model = build_on_meta(model_config(name, flavor), sized_topology(task))
    topology_name = "mano" if hand else "smpl"
    if loaded.num_joints is not None and loaded.num_joints != model.num_joints:
        other = "without --hand" if hand else "with --hand"
        raise FastMetroError(
            f"{source}: has {loaded.num_joints} joint tokens, a {task} model has {model.num_joints} (convert {other}?)"
        )
    check_state_dict(model.state_dict(), loaded.state_dict, str(source))
    expected = model.state_dict()
    state_dict = {key: loaded.state_dict[key].to(expected[key].dtype) for key in expected}
    config = checkpoint_config(model, name, flavor, {}, topology_name)
    write_checkpoint(target, state_dict, config)
    return config
