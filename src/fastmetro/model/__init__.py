"""The FastMETRO network, its presets and checkpoints."""

from fastmetro.model.fastmetro import FastMETRO, FastMETROConfig, mesh_attention_mask, parameter_counts
from fastmetro.model.presets import (
    ABLATIONS,
    BACKBONES,
    FLAVORS,
    count_parameters,
    create_model,
    model_config,
    preset_names,
)

__all__ = [
    "FastMETRO",
    "FastMETROConfig",
    "mesh_attention_mask",
    "parameter_counts",
    "create_model",
    "model_config",
    "count_parameters",
    "preset_names",
    "ABLATIONS",
    "BACKBONES",
    "FLAVORS",
]
