"""Checkpoints: our format (safetensors + JSON), official ``*_state_dict.bin`` files, conversion.

Our format is two files side by side:

- ``NAME.safetensors``: the model's ``state_dict`` (released names; see below);
- ``NAME.json``: the model's :class:`~fastmetro.model.spec.ModelSpec` (preset, flavor, overrides,
  topology, input size and normalisation, format version), enough to rebuild the model.

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
from fastmetro.model.presets import build_on_meta, canonical_name, make_spec, model_config, sized_topology
from fastmetro.model.spec import FORMAT, ModelSpec, TopologySpec
from fastmetro.model_files import read_state_dict

# torchvision ResNet Sequential index (as released) <-> timm ResNet module name.
_RESNET_OFFICIAL_TO_OURS = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_RESNET_OURS_TO_OFFICIAL = {ours: official for official, ours in _RESNET_OFFICIAL_TO_OURS.items()}
_SEQUENTIAL_BACKBONE_KEY = re.compile(r"^backbone\.(\d+)\.(.*)$")
_RESNET_BACKBONE_KEY = re.compile(r"^backbone\.(conv1|bn1|layer[1-4])\.(.*)$")


@dataclass
class LoadedCheckpoint:
    """A state dict in our names, with our spec if the checkpoint has its JSON."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec | None  # from our JSON; None for official / bare files
    flavor: str | None  # the spec's, or inferred from the layer names

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


def read_spec(path: str | os.PathLike) -> ModelSpec | None:
    """The :class:`ModelSpec` in the JSON beside a ``.safetensors`` checkpoint (None if there is
    none). Reads only the small JSON, never the weights."""
    path = Path(path)
    sidecar = json_path(path)
    if path.suffix != ".safetensors" or not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FastMetroError(f"{sidecar}: not a readable JSON checkpoint config ({error})") from None
    return ModelSpec.from_json(data, str(sidecar))


def read_checkpoint(path: str | os.PathLike, spec: ModelSpec | None = None) -> LoadedCheckpoint:
    """Read our safetensors (+ JSON) or an official ``.bin``; names are mapped to ours and every
    tensor must be finite (a one-line error names the file and the tensor)."""
    path = Path(path)
    spec = spec if spec is not None else read_spec(path)
    state_dict = official_to_fastmetro(read_state_dict(path), str(path))
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FastMetroError(f"{path}: tensor {key!r} has non-finite values (NaN or inf): a damaged checkpoint")
    flavor = spec.flavor if spec is not None else infer_flavor(state_dict)
    return LoadedCheckpoint(path, state_dict, spec, flavor)


def infer_preset(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """Preset name and overrides of an official (or bare) state dict, from its layers: the
    variant from the number of encoder layers, the backbone from its blocks, the optional SMPL
    parameter regressor from its keys."""
    layers = {key.split(".")[3] for key in state_dict if key.startswith("transformer_1.encoder.layers.")}
    variant = {1: "S", 2: "M", 3: "L"}.get(len(layers))
    backbone: str | None
    if any(key.startswith("backbone.stage4.") for key in state_dict):
        backbone = "H64"
    elif any(key.startswith("backbone.layer3.") for key in state_dict):
        blocks = {key.split(".")[2] for key in state_dict if key.startswith("backbone.layer3.")}
        has_bottleneck = any(key.startswith("backbone.layer3.0.conv3.") for key in state_dict)
        backbone = "R50" if has_bottleneck else {6: "R34", 2: "R18"}.get(len(blocks))
    else:
        backbone = None
    if variant is None or backbone is None:
        raise FastMetroError("cannot tell the FastMETRO preset from the weights; pass the model name (--model)")
    overrides = (
        {"smpl_parameter_regressor": True} if any(k.startswith("smpl_parameter_regressor.") for k in state_dict) else {}
    )
    return f"FastMETRO-{variant}-{backbone}", overrides


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


def write_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], spec: ModelSpec) -> Path:
    """Atomically write ``path`` (safetensors) and its JSON sibling (the spec)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise FastMetroError(f"{path}: our checkpoints are .safetensors files")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "name": spec.name}))
    with atomic_write(json_path(path), "w") as handle:
        json.dump(spec.to_json(), handle, indent=2)
        handle.write("\n")
    return path


def save_checkpoint(model, path: str | os.PathLike) -> Path:
    """Save a model built by ``create_model`` / ``load_model`` (it carries its spec) in our format."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    spec = getattr(model, "spec", None)
    if spec is None:
        raise FastMetroError(f"{path}: cannot save: the model has no spec (build it with fastmetro.create_model)")
    return write_checkpoint(path, model.state_dict(), spec)


def convert_official(
    source: str | os.PathLike,
    target: str | os.PathLike,
    model_name: str | None = None,
    hand: bool = False,
    flavor: str | None = None,
) -> ModelSpec:
    """Convert an official ``*_state_dict.bin`` into our safetensors + JSON.

    The model is built on the meta device with the built-in mesh sizes (SMPL body or MANO hand;
    parameters depend only on sizes), so this is fast even for HRNet-W64. The preset is read from
    the weights when ``model_name`` is None (and checked against it otherwise); the optional SMPL
    parameter regressor is recognised by its keys. Returns the written spec.
    """
    loaded = read_checkpoint(source)
    flavor = flavor or loaded.flavor or "release"
    inferred, overrides = infer_preset(loaded.state_dict)
    name = canonical_name(model_name) if model_name else inferred
    task = "hand" if hand else "body"
    topology = sized_topology(task)
    model = build_on_meta(model_config(name, flavor, **overrides), topology)
    if loaded.num_joints is not None and loaded.num_joints != model.num_joints:
        other = "without --hand" if hand else "with --hand"
        raise FastMetroError(
            f"{source}: has {loaded.num_joints} joint tokens, a {task} model has {model.num_joints} (convert {other}?)"
        )
    check_state_dict(model.state_dict(), loaded.state_dict, str(source))
    expected = model.state_dict()
    state_dict = {key: loaded.state_dict[key].to(expected[key].dtype) for key in expected}
    sizes = TopologySpec.of(topology)  # the released meshes' sizes, under their real names
    spec = make_spec(name, topology, flavor, overrides).replace(
        topology=TopologySpec("mano" if hand else "smpl", task, sizes.level_vertex_counts, sizes.num_joints)
    )
    write_checkpoint(target, state_dict, spec)
    return spec
