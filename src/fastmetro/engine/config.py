"""Typed training configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

``load_config("configs/x.yaml", ["optim.lr=2e-4", "data.skip_bad_rows=true"])`` reads the YAML,
applies the overrides (nested keys with dots, values parsed as YAML scalars/lists), and checks
every key and type: an unknown key or a wrong type is a one-line :class:`FastMetroError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fastmetro.conventions import IMAGE_SIZE
from fastmetro.data.augment import AugmentConfig
from fastmetro.devices import check_device_name
from fastmetro.engine.losses import LossConfig
from fastmetro.errors import FastMetroError
from fastmetro.model.fastmetro import FastMETROConfig
from fastmetro.model.metro import METROConfig, canonical_metro_name, is_metro_name
from fastmetro.model.presets import FLAVORS, model_config, parse_name


@dataclass
class ModelConfig:
    """The network: a preset name plus :class:`~fastmetro.model.fastmetro.FastMETROConfig` overrides."""

    name: str = "FastMETRO-S-R50"
    topology: str = "anny"  # "anny" | "smpl" | "mano" | a topology .npz
    data_dir: str | None = None  # SMPL/MANO files for those topologies
    flavor: str = "paper"
    checkpoint: str | None = None  # start from these weights (ours or official)
    backbone_weights: str | None = None  # local ImageNet weights
    pretrained: bool = False  # ImageNet weights from the local timm cache (never downloads)
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {dropout: 0.0}


@dataclass
class DataConfig:
    train: str = ""  # dataset yaml
    val: str | None = None  # dataset yaml for evaluation during training
    image_size: int = IMAGE_SIZE
    augment: bool = True
    augment_overrides: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields
    body_model: str | None = None  # SMPL/MANO model file for rows with pose/betas labels
    skip_bad_rows: bool = False
    batch_size: int = 16  # per process (global batch = batch_size x world size)
    val_batch_size: int = 16
    num_workers: int = 2
    max_val_samples: int | None = None  # evaluate on the first N validation rows only
    # With a frozen backbone (optim.backbone_lr_scale: 0): run the backbone once on this many
    # augmented passes over the training set and train on the cached feature maps (0: off).
    cached_feature_passes: int = 0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    eps: float = 1e-8  # AdamW epsilon
    clip_grad_norm: float = 0.3  # 0 disables
    schedule: str = "constant"  # constant | step | cosine
    step_size: int = 0  # step schedule: multiply by gamma every step_size steps
    gamma: float = 0.1
    warmup_steps: int = 0  # linear warm-up (any schedule)
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    # Backbone learning rate as a fraction of lr: 1 trains it like the rest (released); 0 freezes
    # it (no gradients, BatchNorm in eval mode: a pretrained encoder kept as it is); 0.1 unfreezes
    # it at a lower rate, e.g. in a later stage that starts from a frozen-backbone run.
    backbone_lr_scale: float = 1.0


@dataclass
class TrainConfig:
    output_dir: str = "runs/fastmetro"
    steps: int = 1000  # total optimiser steps (iteration-based, as released)
    seed: int = 88
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPUs that support it, fp32 on CPU) | fp32 | bf16 | fp16
    deterministic: bool = True  # deterministic kernels where available (always exact on CPU)
    eval_every: int = 0  # steps; 0 = only at the end
    checkpoint_every: int = 0  # steps; 0 = only at evaluations and the end
    log_every: int = 10
    progress: bool = True  # tqdm bar (rank 0)
    tensorboard: bool = True
    hand_metrics: bool | None = None  # F-score/PA-MPVPE focus; None = wrist-rooted topologies
    distributed_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    find_unused_parameters: bool = False
    freeze_batchnorm: bool = False  # BatchNorm in eval mode, affine frozen (batch-size independent)
    sync_batchnorm: bool = False  # SyncBatchNorm across GPUs under DDP


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------- (de)serialisation
def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _short(value: Any) -> str:
    """A value for a message: never the repr of a whole structure (a YAML alias bomb would expand)."""
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _coerce(value: Any, annotation, where: str) -> Any:
    """Check/convert ``value`` to the field type ``annotation`` (the subset we use)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise FastMetroError(f"{where}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except FastMetroError as error:
                errors.append(str(error))
        raise FastMetroError(errors[0])
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise FastMetroError(f"{where}: expected a mapping, got {_short(value)}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FastMetroError(f"{where}: expected a list, got {_short(value)}")
        args = typing.get_args(annotation) or (Any,)
        if origin is tuple and Ellipsis not in args and len(value) != len(args):
            raise FastMetroError(f"{where}: expected {len(args)} values, got {len(value)}")
        return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise FastMetroError(f"{where}: expected a mapping, got {_short(value)}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise FastMetroError(f"{where}: expected true/false, got {_short(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise FastMetroError(f"{where}: expected an integer, got {_short(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise FastMetroError(f"{where}: expected a number, got {_short(value)}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise FastMetroError(f"{where}: expected a string, got {_short(value)}")
    raise FastMetroError(f"{where}: unsupported field type {_type_name(annotation)}")


def from_dict(cls, values: dict, where: str = "config"):
    """Build dataclass ``cls`` from a (nested) dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FastMetroError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    return cls(**kwargs)


def to_dict(config) -> dict:
    """Plain nested dict of a config dataclass (YAML/JSON-serialisable)."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=2e-4"`` -> (["optim", "lr"], 2e-4); the value is read as YAML."""
    if "=" not in text:
        raise FastMetroError(f"override {text!r}: expected key=value (e.g. optim.lr=2e-4)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(part.strip() for part in path):
        raise FastMetroError(f"override {text!r}: empty key (or an empty part between dots)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return [part.strip() for part in path], value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Set nested keys of a plain dict from ``key=value`` strings (creates mappings as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise FastMetroError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return values


def packaged_configs() -> list[str]:
    """Names of the configs shipped with the package (``fastmetro train demo``)."""
    folder = resources.files("fastmetro") / "configs"
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def config_path(text: str) -> Path:
    """A config file path, or the name of a packaged config (``demo`` = fastmetro/configs/demo.yaml)."""
    path = Path(text)
    if not path.exists() and path.suffix == "" and text in packaged_configs():
        return Path(str(resources.files("fastmetro") / "configs" / f"{text}.yaml"))
    return path


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (None = all defaults) and apply ``key=value`` overrides.

    Relative dataset/output paths in the YAML stay relative to the working directory.
    """
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FastMetroError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise FastMetroError(f"{path}: not a YAML config (not UTF-8 text, byte {error.start})") from None
        except yaml.YAMLError as error:
            raise FastMetroError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        except RecursionError:
            raise FastMetroError(f"{path}: not valid YAML (nested too deeply)") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise FastMetroError(f"{path}: a config must be a mapping of sections")
        values = loaded or {}
    # Default sections first so overrides of an absent section still land in a mapping.
    base = to_dict(ExperimentConfig())
    for section, content in values.items():
        if isinstance(content, dict) and isinstance(base.get(section), dict):
            base[section].update(content)
        else:
            base[section] = content
    apply_overrides(base, list(overrides or []))
    where = str(path) if path is not None else "config"
    config = from_dict(ExperimentConfig, base, where=where)
    validate(config, where)
    return config


# (section.field, lowest allowed value, "what it is"): counts and rates the trainer divides by,
# indexes with or hands to PyTorch. Every float must also be finite (checked for all fields).
_MINIMUMS = (
    ("train.steps", 1),
    ("train.log_every", 1),
    ("train.eval_every", 0),
    ("train.checkpoint_every", 0),
    ("train.seed", 0),
    ("data.image_size", 32),
    ("data.batch_size", 1),
    ("data.val_batch_size", 1),
    ("data.num_workers", 0),
    ("data.max_val_samples", 1),
    ("data.cached_feature_passes", 0),
    ("optim.weight_decay", 0.0),
    ("optim.clip_grad_norm", 0.0),
    ("optim.warmup_steps", 0),
    ("optim.min_lr_ratio", 0.0),
    ("optim.backbone_lr_scale", 0.0),
    ("loss.joints_3d_weight", 0.0),
    ("loss.vertices_weight", 0.0),
    ("loss.joints_2d_weight", 0.0),
    ("loss.edge_normal_weight", 0.0),
    ("loss.edge_level", 0),
    ("loss.edge_length_weight", 0.0),
    ("loss.edge_self_weight", 0.0),
    ("loss.normal_weight", 0.0),
    ("loss.laplacian_weight", 0.0),
)
_POSITIVE = ("optim.lr", "optim.eps", "optim.gamma")
_CHOICES = (
    ("optim.schedule", ("constant", "step", "cosine")),
    ("train.precision", ("auto", "fp32", "bf16", "fp16")),
    ("train.distributed_backend", ("auto", "nccl", "gloo")),
)


def _value(config, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def _non_finite(config) -> list[str]:
    """Dotted names of float fields (or list items) holding NaN or inf."""
    found = []
    for section in dataclasses.fields(config):
        for item in dataclasses.fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), item.name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                found.append(f"{section.name}.{item.name}")
    return found


def validate(config: ExperimentConfig, where: str = "config") -> None:
    """Range checks that types cannot express, and the model/augmentation overrides.

    Raises one :class:`FastMetroError` line listing every problem with its ``section.field``.
    """
    non_finite = _non_finite(config)
    problems = [f"{name} must be finite" for name in non_finite]
    for name, minimum in _MINIMUMS:
        value = _value(config, name)
        if name not in non_finite and value is not None and isinstance(value, (int, float)) and value < minimum:
            problems.append(f"{name} must be >= {minimum} (got {value})")
    problems += [
        f"{name} must be > 0 (got {_value(config, name)})"
        for name in _POSITIVE
        if name not in non_finite and not _value(config, name) > 0
    ]
    for name, choices in _CHOICES:
        if _value(config, name) not in choices:
            problems.append(f"{name} must be one of {', '.join(choices)} (got {_short(_value(config, name))})")
    if config.train.seed >= 2**63:
        problems.append("train.seed must be < 2^63")
    if config.optim.schedule == "step" and config.optim.step_size < 1:
        problems.append("optim.step_size must be >= 1 for the step schedule")
    if config.optim.min_lr_ratio > 1:
        problems.append("optim.min_lr_ratio must be <= 1")
    if config.data.cached_feature_passes and config.optim.backbone_lr_scale != 0:
        problems.append("data.cached_feature_passes needs a frozen backbone (optim.backbone_lr_scale: 0)")
    if config.loss.level_weights is not None and (
        not config.loss.level_weights or sum(config.loss.level_weights) <= 0 or min(config.loss.level_weights) < 0
    ):
        problems.append("loss.level_weights must be non-negative with a positive sum")
    if not config.train.output_dir.strip():
        problems.append("train.output_dir must not be empty")
    for check in (
        lambda: check_device_name(config.train.device, "train.device"),
        lambda: _check_model(config),
        lambda: _check_augment(config),
    ):
        try:
            check()
        except FastMetroError as error:
            problems.append(str(error))
    if problems:
        raise FastMetroError(f"{where}: " + "; ".join(problems))


def _check_model(config: ExperimentConfig) -> None:
    """``model.name``/``flavor`` must be a preset and ``model.overrides`` typed fields of its config
    (:class:`FastMETROConfig`, or :class:`~fastmetro.model.metro.METROConfig` for ``METRO-*``)."""
    metro = is_metro_name(config.model.name)
    try:
        canonical_metro_name(config.model.name) if metro else parse_name(config.model.name)
    except FastMetroError as error:
        raise FastMetroError(f"model.name: {error}") from None
    if config.model.flavor not in FLAVORS:
        raise FastMetroError(f"model.flavor must be one of {', '.join(FLAVORS)} (got {_short(config.model.flavor)})")
    hints = typing.get_type_hints(METROConfig if metro else FastMETROConfig)
    unknown = sorted(set(config.model.overrides) - set(hints))
    if unknown:
        raise FastMetroError(f"model.overrides: unknown option(s) {unknown}; known: {sorted(hints)}")
    overrides = {
        key: _coerce(value, hints[key], f"model.overrides.{key}") for key, value in config.model.overrides.items()
    }
    for key in (
        "num_heads",
        "num_encoder_layers",
        "num_decoder_layers",
        "model_dims",
        "feedforward_dims",
        "hidden_dims",
        "output_dims",
        "num_layers",
        "intermediate_size",
        "camera_hidden",
    ):
        values = overrides.get(key)  # intermediate_size may be None (= 4 x hidden)
        if values is not None and any(v < 1 for v in (values if isinstance(values, list) else [values])):
            raise FastMetroError(f"model.overrides.{key} must be >= 1 (got {values})")
    try:
        model_config(config.model.name, config.model.flavor, **overrides)
    except FastMetroError as error:
        raise FastMetroError(f"model.overrides: {error}") from None
    config.model.overrides = overrides


def _check_augment(config: ExperimentConfig) -> None:
    """``data.augment_overrides`` must be typed AugmentConfig fields within their ranges."""
    overrides = config.data.augment_overrides
    augment = from_dict(AugmentConfig, overrides, "data.augment_overrides")  # typed, unknown keys refused
    coerced = {key: getattr(augment, key) for key in overrides}
    problems = [
        f"data.augment_overrides.{key} must be finite"
        for key, value in coerced.items()
        if any(
            isinstance(v, float) and not math.isfinite(v)
            for v in (value if isinstance(value, (list, tuple)) else [value])
        )
    ]
    low, high = augment.occlusion_size
    for key, ok in (
        ("flip_prob", 0 <= augment.flip_prob <= 1),
        ("rotation_zero_prob", 0 <= augment.rotation_zero_prob <= 1),
        ("occlusion_prob", 0 <= augment.occlusion_prob <= 1),
        ("rotation_std", augment.rotation_std >= 0),
        ("rotation_limit", augment.rotation_limit >= 0),
        ("scale_std", augment.scale_std >= 0),
        ("scale_limit", 0 <= augment.scale_limit < 1),
        ("noise", 0 <= augment.noise <= 1),
        ("occlusion_max_patches", augment.occlusion_max_patches >= 1),
        ("occlusion_size", 0 < low <= high <= 1),
    ):
        if key in coerced and not ok:
            problems.append(f"data.augment_overrides.{key} is out of range (got {_short(coerced[key])})")
    if problems:
        raise FastMetroError("; ".join(problems))
    config.data.augment_overrides = {key: list(v) if isinstance(v, tuple) else v for key, v in coerced.items()}


def check_topology(config: ExperimentConfig, topology) -> None:
    """Settings that depend on the mesh: ``loss.level_weights`` (one per level), ``loss.edge_level``."""
    problems = []
    levels = topology.num_levels
    if config.loss.level_weights is not None and len(config.loss.level_weights) != levels:
        problems.append(
            f"loss.level_weights has {len(config.loss.level_weights)} entries, topology "
            f"'{topology.name}' has {levels} levels"
        )
    if config.loss.edge_level is not None and config.loss.edge_level >= levels:
        problems.append(
            f"loss.edge_level {config.loss.edge_level} is not a level of topology '{topology.name}' (0..{levels - 1})"
        )
    if problems:
        raise FastMetroError("config: " + "; ".join(problems))
