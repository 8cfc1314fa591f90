"""Typed training configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

``load_config("configs/x.yaml", ["optim.lr=2e-4", "data.skip_bad_rows=true"])`` reads the YAML,
applies the overrides (nested keys with dots, values parsed as YAML scalars/lists), and checks
every key and type: an unknown key or a wrong type is a one-line :class:`FastMetroError`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fastmetro.engine.losses import LossConfig
from fastmetro.errors import FastMetroError


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
    image_size: int = 224
    augment: bool = True
    augment_overrides: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields
    body_model: str | None = None  # SMPL/MANO model file for rows with pose/betas labels
    skip_bad_rows: bool = False
    batch_size: int = 16  # per process (global batch = batch_size x world size)
    val_batch_size: int = 16
    num_workers: int = 2
    max_val_samples: int | None = None  # evaluate on the first N validation rows only


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
            raise FastMetroError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FastMetroError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return [_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise FastMetroError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise FastMetroError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise FastMetroError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise FastMetroError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise FastMetroError(f"{where}: expected a string, got {value!r}")
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
    if not key.strip():
        raise FastMetroError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


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
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise FastMetroError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
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
    config = from_dict(ExperimentConfig, base, where=str(path) if path is not None else "config")
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Range checks that types cannot express."""
    problems = []
    if config.train.steps < 1:
        problems.append("train.steps must be >= 1")
    if config.data.batch_size < 1 or config.data.val_batch_size < 1:
        problems.append("data.batch_size and data.val_batch_size must be >= 1")
    if config.optim.schedule not in ("constant", "step", "cosine"):
        problems.append("optim.schedule must be constant, step or cosine")
    if config.optim.schedule == "step" and config.optim.step_size < 1:
        problems.append("optim.step_size must be >= 1 for the step schedule")
    if config.train.precision not in ("auto", "fp32", "bf16", "fp16"):
        problems.append("train.precision must be auto, fp32, bf16 or fp16")
    if config.optim.lr <= 0:
        problems.append("optim.lr must be > 0")
    if problems:
        raise FastMetroError("config: " + "; ".join(problems))
