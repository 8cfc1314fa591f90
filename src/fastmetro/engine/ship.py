"""Shipping a trained model as the package's default (:mod:`fastmetro.weights` finds and checks it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write
from fastmetro.model.checkpoint import read_checkpoint, write_checkpoint
from fastmetro.weights import RECIPE_FILE, STORED_DTYPE, WEIGHTS_FILE, ShippedModel, sha256_of


def ship_checkpoint(checkpoint: str | os.PathLike, folder: str | os.PathLike, recipe: dict) -> ShippedModel:
    """Write a training checkpoint as the shipped files in ``folder``: float16 weights, the same
    spec JSON, and ``recipe`` plus the weights' SHA-256 and size.

    Every floating tensor must survive float16 (finite; a value beyond float16's range is an
    error rather than an inf). Integer buffers (BatchNorm's step counters) keep their type.
    """
    loaded = read_checkpoint(checkpoint)
    if loaded.spec is None:
        raise FastMetroError(f"{checkpoint}: only our checkpoints (with their JSON spec) can be shipped")
    half = {}
    for key, value in loaded.state_dict.items():
        if value.is_floating_point():
            value = value.to(torch.float16)
            if not bool(torch.isfinite(value).all()):
                raise FastMetroError(f"{checkpoint}: tensor {key!r} does not fit in float16")
        half[key] = value
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = write_checkpoint(folder / WEIGHTS_FILE, half, loaded.spec)
    size = weights.stat().st_size
    recipe = {**recipe, "stored_dtype": STORED_DTYPE, "sha256": sha256_of(weights), "size_bytes": size}
    with atomic_write(folder / RECIPE_FILE, "w") as handle:
        json.dump(recipe, handle, indent=2)
        handle.write("\n")
    return ShippedModel(weights, recipe)


__all__ = ["ship_checkpoint"]
