"""Named presets (``FastMETRO-S-R50``, ``FastMETRO-L-H64``, ...) -> :class:`FastMETROConfig`,
their :class:`~fastmetro.model.spec.ModelSpec`, and :func:`build_network` (a fresh network for a
spec). Loading from checkpoints is :mod:`fastmetro.model.factory`.

A name is ``FastMETRO-<variant>-<backbone>[+<ablation>]`` (case-insensitive):

- variant ``S`` / ``M`` / ``L``: 1 / 2 / 3 layers in each encoder and decoder of both transformers;
- backbone ``R50`` (ResNet-50), ``H64`` (HRNet-W64), the light ``R18`` / ``R34`` for CPU use, or
  ``BPL`` / ``BPF`` / ``BPH``: MediaPipe's BlazePose GHUM lite / full / heavy landmark encoder,
  pretrained on real people (256 px crops; :mod:`fastmetro.model.blazepose_backbone`);
- optional Table 4 ablation: ``no-mask``, ``half-head-mask``, ``graph-conv``,
  ``learnable-upsampling``, ``no-dim-reduction``.

The flavor (``paper`` or ``release``, see :data:`FLAVORS`) and the topology (body: SMPL/Anny,
hand: MANO) are chosen separately. Any config field can be overridden by keyword, e.g.
``backbone="efficientnet_b0"`` for any timm backbone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fastmetro.conventions import IMAGE_SIZE
from fastmetro.errors import FastMetroError
from fastmetro.model.backbone import BACKBONES
from fastmetro.model.fastmetro import FastMETRO, FastMETROConfig, parameter_counts
from fastmetro.model.metro import METRO, METROConfig, canonical_metro_name, is_metro_name, metro_config
from fastmetro.model.spec import FLAVOR_NAMES, InputSpec, ModelSpec, TopologySpec
from fastmetro.topology import Topology

VARIANT_LAYERS = {"S": 1, "M": 2, "L": 3}


FLAVORS: dict[str, dict[str, object]] = {
    # Paper: one shared encoder reduction Linear, fixed upsampling matrices for every level.
    "paper": {"dim_reduction": "shared", "upsampling": "fixed"},
    # Released checkpoints: separate camera/image reductions, learnable coarse -> intermediate step.
    "release": {"dim_reduction": "separate", "upsampling": "learnable_coarse"},
}
assert tuple(FLAVORS) == FLAVOR_NAMES

ABLATIONS: dict[str, dict[str, object]] = {
    "no-mask": {"attention_mask": "none"},
    "half-head-mask": {"attention_mask": "half_heads"},
    "graph-conv": {"attention_mask": "none", "graph_convolutions": True},
    "learnable-upsampling": {"upsampling": "learnable"},
    "no-dim-reduction": {"model_dims": (512, 512), "feedforward_dims": (2048, 2048)},
}

# Mesh sizes per task (built-in topologies): level vertex counts (fine first) and joints.
TASK_SIZES = {
    "body": ((6890, 1723, 431), 14),
    "hand": ((778, 195), 21),
}

_NAME = re.compile(r"^fastmetro-([sml])-([a-z0-9]+)(?:\+([a-z-]+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class PresetName:
    variant: str
    backbone: str
    ablation: str | None

    def __str__(self) -> str:
        return f"FastMETRO-{self.variant}-{self.backbone}" + (f"+{self.ablation}" if self.ablation else "")


def parse_name(name: str) -> PresetName:
    match = _NAME.match(str(name).strip())
    if (
        not match
        or match.group(2).upper() not in BACKBONES
        or (match.group(3) and match.group(3).lower() not in ABLATIONS)
    ):
        raise FastMetroError(
            f"unknown model {name!r}: expected FastMETRO-<S|M|L>-<{'|'.join(BACKBONES)}>"
            f"[+<{'|'.join(ABLATIONS)}>], e.g. FastMETRO-S-R50"
        )
    ablation = match.group(3).lower() if match.group(3) else None
    return PresetName(match.group(1).upper(), match.group(2).upper(), ablation)


def canonical_name(name: str) -> str:
    if is_metro_name(name):
        return canonical_metro_name(name)
    return str(parse_name(name))


def preset_names(ablations: bool = False) -> list[str]:
    """Base preset names (S/M/L x backbones); with ``ablations``, also Table 4's S-R50 rows."""
    names = [f"FastMETRO-{v}-{b}" for b in BACKBONES for v in VARIANT_LAYERS]
    if ablations:
        names += [f"FastMETRO-S-R50+{a}" for a in ABLATIONS]
    return names


def model_config(name: str, flavor: str = "paper", **overrides) -> FastMETROConfig | METROConfig:
    """Config of a named preset in a flavor, with optional :class:`FastMETROConfig` field overrides."""
    if is_metro_name(name):  # the METRO-style baseline (no flavors)
        return metro_config(name, **overrides)
    parsed = parse_name(name)
    if flavor not in FLAVORS:
        raise FastMetroError(f"unknown flavor {flavor!r}: use one of {tuple(FLAVORS)}")
    layers = VARIANT_LAYERS[parsed.variant]
    spec = BACKBONES[parsed.backbone]
    fields = {
        "backbone": spec.timm_name,
        "backbone_keeps_classifier": spec.keeps_classifier,
        "backbone_pretrained_tag": spec.pretrained_tag,
        "num_encoder_layers": layers,
        "num_decoder_layers": layers,
        **FLAVORS[flavor],
        **(ABLATIONS[parsed.ablation] if parsed.ablation else {}),
    }
    if "backbone" in overrides and "backbone_pretrained_tag" not in overrides:
        overrides = {**overrides, "backbone_pretrained_tag": None}
        if "backbone_keeps_classifier" not in overrides:
            overrides["backbone_keeps_classifier"] = False
    return FastMETROConfig().replace(**fields).replace(**overrides)


def sized_topology(task: str):
    """A data-free :class:`Topology` with the mesh sizes of ``task`` (for counting and for
    converting checkpoints: parameters depend only on sizes). Its matrices are empty: do not
    run a model built on it."""
    if task not in TASK_SIZES:
        raise FastMetroError(f"unknown task {task!r}: use one of {tuple(TASK_SIZES)}")
    counts, joints = TASK_SIZES[task]
    return Topology(
        kind=task,
        name=f"{task}-sizes",
        level_vertex_counts=counts,
        faces=tuple(np.zeros((0, 3), dtype=np.int64) for _ in counts),
        kept_indices=tuple(np.arange(counts[level + 1]) for level in range(len(counts) - 1)),
        upsample=tuple(sp.csr_matrix((counts[level], counts[level + 1])) for level in range(len(counts) - 1)),
        coarse_adjacency=sp.csr_matrix((counts[-1], counts[-1])),
        joint_regressor=np.zeros((joints, counts[0])),
        joint_names=tuple(f"joint_{i}" for i in range(joints)),
        joint_flip=np.arange(joints),
        root_joints=(0,),
        root_regressor=np.zeros(counts[0]),
    )


def network_class(config) -> type:
    """The network class a config builds: METRO for :class:`METROConfig`, else FastMETRO."""
    return METRO if isinstance(config, METROConfig) else FastMETRO


def build_on_meta(config: FastMETROConfig | METROConfig, topology) -> FastMETRO | METRO:
    """Build without allocating weights (instant even for HRNet-W64); for shapes and counts."""
    import torch

    with torch.device("meta"):
        return network_class(config)(config, topology)


def count_parameters(name: str, flavor: str = "paper", task: str = "body", **overrides) -> dict[str, int]:
    """Backbone / transformer / total parameter counts of a preset, without any data files."""
    model = build_on_meta(model_config(name, flavor, **overrides), sized_topology(task))
    return parameter_counts(model)


def make_spec(
    name: str, topology, flavor: str = "paper", overrides: dict | None = None, image_size: int = IMAGE_SIZE
) -> ModelSpec:
    """The :class:`ModelSpec` of a preset on ``topology`` (the name is checked and canonicalised;
    the overrides are checked by building the config)."""
    overrides = dict(overrides or {})
    model_config(name, flavor, **overrides)  # raises a one-line error for a bad name/flavor/override
    return ModelSpec(
        name=canonical_name(name),
        topology=TopologySpec.of(topology),
        flavor=flavor,
        overrides=overrides,
        input=InputSpec(image_size=int(image_size)),
    )


def build_network(spec: ModelSpec, topology, pretrained: bool = False) -> FastMETRO:
    """A freshly initialised network for ``spec`` on ``topology`` (``model.spec`` is ``spec``)."""
    config = model_config(spec.name, spec.flavor, **dict(spec.overrides))
    if not spec.topology.fits(topology):
        raise FastMetroError(
            f"{spec.name}: built for topology '{spec.topology.name}' {spec.topology.level_vertex_counts} with "
            f"{spec.topology.num_joints} joints, not '{topology.name}' {tuple(topology.level_vertex_counts)} "
            f"with {topology.num_joints}"
        )
    return network_class(config)(config, topology, pretrained_backbone=pretrained, spec=spec)
