"""The FastMETRO network, its presets and checkpoints."""

from fastmetro.model.factory import create_model, load_model
from fastmetro.model.fastmetro import FastMETRO, FastMETROConfig, mesh_attention_mask, parameter_counts
from fastmetro.model.presets import (
    ABLATIONS,
    BACKBONES,
    FLAVORS,
    count_parameters,
    model_config,
    preset_names,
)
from fastmetro.model.spec import InputSpec, ModelSpec, TopologySpec

__all__ = [
    "FastMETRO",
    "FastMETROConfig",
    "mesh_attention_mask",
    "parameter_counts",
    "create_model",
    "load_model",
    "ModelSpec",
    "TopologySpec",
    "InputSpec",
    "model_config",
    "count_parameters",
    "preset_names",
    "ABLATIONS",
    "BACKBONES",
    "FLAVORS",
]
