"""What a model is: :class:`ModelSpec`, a frozen value that travels with the model and its checkpoint
(in the spirit of timm's ``pretrained_cfg``).

A spec names the preset and flavor, the architecture overrides, the topology it was built for
(name, kind and sizes), the input it expects (crop size and normalisation) and the checkpoint
format version. ``create_model`` attaches it to the model (``model.spec``), ``save_checkpoint``
writes it as the checkpoint's JSON, and ``load_model`` reads it first to know what to build.

Checkpoint JSON (``NAME.json`` beside ``NAME.safetensors``)::

    {"format": "fastmetro-checkpoint", "version": 2,
     "name": "FastMETRO-S-R50", "flavor": "paper", "overrides": {...},
     "topology": {"name": "anny", "kind": "body", "level_vertex_counts": [13348, 1723, 431], "num_joints": 14},
     "input": {"image_size": 224, "mean": [...], "std": [...]}}

Format versions: 1 (fastmetro 0.1) projected the raw, uncentred network output with the
weak-perspective camera; 2 projects root-centred points as the released code does (see
:mod:`fastmetro.conventions`). The weights of a version-1 checkpoint therefore hold a camera that
means something else, and no exact conversion exists (the root offset differs per image), so
version 1 is refused with a message saying so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastmetro.conventions import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
from fastmetro.errors import FastMetroError

FORMAT = "fastmetro-checkpoint"
VERSION = 2
FLAVOR_NAMES = ("paper", "release")
KIND_NAMES = ("body", "hand")
#: What changed in each format version (for the refusal of older files).
VERSION_CHANGES = {
    1: "the weak-perspective camera then applied to the raw, uncentred network output; since format 2 it "
    "applies to root-centred points as in the released code, so the camera in these weights means something "
    "else. Retrain the model, or re-convert official weights with `fastmetro convert`",
}
_MAX_VERTICES = 10_000_000


class FrozenDict(dict):
    """A read-only dict (architecture overrides): copies and pickles like a dict."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a ModelSpec is frozen: use spec.replace(overrides=...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __hash__(self):
        return hash(tuple(sorted(self.items(), key=lambda item: item[0])))


@dataclass(frozen=True)
class TopologySpec:
    """The mesh a model predicts: its name (``anny``/``smpl``/``mano`` or a user name), kind and sizes."""

    name: str
    kind: str
    level_vertex_counts: tuple[int, ...]
    num_joints: int

    @classmethod
    def of(cls, topology) -> TopologySpec:
        return cls(
            str(topology.name),
            str(topology.kind),
            tuple(int(n) for n in topology.level_vertex_counts),
            int(topology.num_joints),
        )

    def fits(self, topology) -> bool:
        return (
            tuple(topology.level_vertex_counts) == self.level_vertex_counts and topology.num_joints == self.num_joints
        )


@dataclass(frozen=True)
class InputSpec:
    """The network input: ``image_size`` x ``image_size`` crops, normalised with ``mean``/``std``
    (RGB in [0, 1])."""

    image_size: int = IMAGE_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity. ``overrides`` is a read-only mapping of architecture overrides
    (:class:`~fastmetro.model.fastmetro.FastMETROConfig` fields) on top of the named preset."""

    name: str
    topology: TopologySpec
    flavor: str = "paper"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    input: InputSpec = InputSpec()
    version: int = VERSION

    def __post_init__(self):
        object.__setattr__(self, "overrides", FrozenDict(_frozen_values(dict(self.overrides))))

    @property
    def task(self) -> str:
        return self.topology.kind

    def replace(self, **changes) -> ModelSpec:
        import dataclasses

        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "name": self.name,
            "flavor": self.flavor,
            "overrides": _jsonable(dict(self.overrides)),
            "topology": {
                "name": self.topology.name,
                "kind": self.topology.kind,
                "level_vertex_counts": list(self.topology.level_vertex_counts),
                "num_joints": self.topology.num_joints,
            },
            "input": {"image_size": self.input.image_size, "mean": list(self.input.mean), "std": list(self.input.std)},
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "<checkpoint json>") -> ModelSpec:
        """Validate a checkpoint JSON object; every problem is a one-line error naming ``source``."""
        return _parse(data, source)


# ----------------------------------------------------------------------------- JSON schema
def _fail(source: str, problem: str):
    raise FastMetroError(f"{source}: {problem}")


def _field(data: dict, key: str, kind, source: str, where: str = ""):
    name = f"'{where}{key}'"
    if key not in data:
        _fail(source, f"missing field {name}")
    value = data[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        _fail(source, f"field {name} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        _fail(source, f"field {name} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _parse(data: Any, source: str) -> ModelSpec:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        _fail(source, f"not a fastmetro checkpoint config (format must be {FORMAT!r})")
    version = _field(data, "version", int, source)
    if version < VERSION:
        _fail(source, f"checkpoint format {version} is too old: {VERSION_CHANGES.get(version, 'unsupported')}")
    if version > VERSION:
        _fail(source, f"checkpoint format {version} is newer than this fastmetro reads ({VERSION}); upgrade fastmetro")
    name = _field(data, "name", str, source)
    flavor = _field(data, "flavor", str, source)
    if flavor not in FLAVOR_NAMES:
        _fail(source, f"field 'flavor' must be one of {FLAVOR_NAMES}, got {flavor!r}")
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict) or not all(isinstance(key, str) for key in overrides):
        _fail(source, "field 'overrides' must be an object of architecture options")
    topology = _field(data, "topology", dict, source)
    counts = _field(topology, "level_vertex_counts", list, source, "topology.")
    if not counts or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= _MAX_VERTICES for n in counts):
        _fail(source, f"field 'topology.level_vertex_counts' must be positive vertex counts, got {counts!r}")
    num_joints = _field(topology, "num_joints", int, source, "topology.")
    if not 0 <= num_joints <= 10_000:
        _fail(source, f"field 'topology.num_joints' out of range: {num_joints}")
    kind = topology.get("kind", "body")
    if kind not in KIND_NAMES:
        _fail(source, f"field 'topology.kind' must be one of {KIND_NAMES}, got {kind!r}")
    topology_spec = TopologySpec(_field(topology, "name", str, source, "topology."), kind, tuple(counts), num_joints)
    return ModelSpec(
        name=name,
        topology=topology_spec,
        flavor=flavor,
        overrides=overrides,
        input=_parse_input(data.get("input", {}), source),
        version=version,
    )


def _parse_input(data: Any, source: str) -> InputSpec:
    if not isinstance(data, dict):
        _fail(source, "field 'input' must be an object")
    size = data.get("image_size", IMAGE_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        _fail(source, f"field 'input.image_size' must be an integer in 16..4096, got {size!r}")
    values: dict[str, tuple[float, float, float]] = {}
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        value = data.get(key, list(default))
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        ):
            _fail(source, f"field 'input.{key}' must be three finite numbers, got {value!r}")
        if key == "std" and min(value) <= 0:
            _fail(source, f"field 'input.std' must be positive, got {value!r}")
        values[key] = (float(value[0]), float(value[1]), float(value[2]))  # three numbers, checked above
    return InputSpec(size, values["mean"], values["std"])


def _frozen_values(value):
    if isinstance(value, dict):
        return {str(k): _frozen_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_frozen_values(v) for v in value)
    return value


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["FORMAT", "VERSION", "FLAVOR_NAMES", "KIND_NAMES", "ModelSpec", "TopologySpec", "InputSpec"]
