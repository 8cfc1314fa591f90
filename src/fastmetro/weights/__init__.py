"""The default model shipped inside the package: a FastMETRO trained by fastmetro on its own free data.

Three files in this folder (package data, so ``pip install`` carries them)::

    default.safetensors    the weights, float16 (loaded into float32 models)
    default.json           its ModelSpec (preset, overrides, topology, input size), as any checkpoint
    default_recipe.json    how it was made: config, data commands, seed, commit, training time,
                           images/s, metrics, and the SHA-256 of the weights

:func:`shipped_checkpoint` finds and checks them (a missing or damaged file is a one-line
:class:`~fastmetro.errors.FastMetroError`); :func:`resolve_checkpoint` turns the name
``"default"`` into that path wherever a checkpoint path is accepted (``load_model("default")``,
``model.checkpoint=default`` in training, ``--checkpoint default``). :func:`ship_checkpoint` writes
the three files from a training checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fastmetro.errors import FastMetroError

#: The name that stands for the shipped model wherever a checkpoint path is accepted.
DEFAULT_NAME = "default"
WEIGHTS_FILE = "default.safetensors"
RECIPE_FILE = "default_recipe.json"
SHIPPED_FILES = (WEIGHTS_FILE, "default.json", RECIPE_FILE)
#: Tensors are stored in this precision (half the size; the network runs in float32).
STORED_DTYPE = "float16"


def package_folder() -> Path:
    """The folder of the shipped files (this package's folder)."""
    return Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedModel:
    """The shipped checkpoint (``path`` + its JSON) and its recipe (a dict, see the module docstring)."""

    path: Path
    recipe: dict

    @property
    def description(self) -> str:
        """One line: what the model is (for 'using ...' messages)."""
        name = self.recipe.get("model", "FastMETRO")
        size = self.recipe.get("image_size")
        size_text = f", {size} px" if size else ""
        return f"the shipped default model ({name}{size_text}, trained on synthetic Anny data): {self.path}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_checkpoint(folder: str | os.PathLike | None = None) -> ShippedModel:
    """The shipped default model, checked: all three files present, the recipe readable, the
    weights' SHA-256 equal to the recipe's, the spec JSON valid.

    Args:
        folder: where to look (default: :func:`package_folder`; tests use a copy).

    Raises:
        FastMetroError: one line naming the missing or damaged file.
    """
    from fastmetro.model.checkpoint import json_path, read_spec

    folder = Path(folder) if folder is not None else package_folder()
    weights, recipe_path = folder / WEIGHTS_FILE, folder / RECIPE_FILE
    fix = "reinstall fastmetro, or pass a checkpoint (--checkpoint MODEL.safetensors)"
    for path in (weights, json_path(weights), recipe_path):
        if not path.is_file():
            raise FastMetroError(f"{path}: the shipped default model's file is missing: {fix}")
    try:
        recipe = json.loads(recipe_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FastMetroError(f"{recipe_path}: the shipped default model's recipe is damaged ({error}): {fix}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("sha256"), str):
        raise FastMetroError(f"{recipe_path}: the shipped default model's recipe has no 'sha256' of the weights: {fix}")
    if _sha256(weights) != recipe["sha256"]:
        raise FastMetroError(
            f"{weights}: the shipped default model's weights are damaged "
            f"(SHA-256 differs from {recipe_path.name}): {fix}"
        )
    read_spec(weights)  # a damaged spec JSON is a one-line error naming the field
    return ShippedModel(weights, recipe)


def is_default_name(checkpoint: str | os.PathLike) -> bool:
    """True when ``checkpoint`` is the name ``"default"`` and no file of that name exists."""
    return str(checkpoint) == DEFAULT_NAME and not Path(checkpoint).exists()


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """``"default"`` -> the shipped model's path (checked); any other value -> itself as a path."""
    if is_default_name(checkpoint):
        return shipped_checkpoint().path
    return Path(checkpoint)


def ship_checkpoint(checkpoint: str | os.PathLike, folder: str | os.PathLike, recipe: dict) -> ShippedModel:
    """Write a training checkpoint as the shipped files in ``folder``: float16 weights, the same
    spec JSON, and ``recipe`` plus the weights' SHA-256 and size.

    Every floating tensor must survive float16 (finite; a value beyond float16's range is an
    error rather than an inf). Integer buffers (BatchNorm's step counters) keep their type.
    """
    import torch

    from fastmetro.io import atomic_write
    from fastmetro.model.checkpoint import read_checkpoint, write_checkpoint

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
    recipe = {**recipe, "stored_dtype": STORED_DTYPE, "sha256": _sha256(weights), "size_bytes": weights.stat().st_size}
    with atomic_write(folder / RECIPE_FILE, "w") as handle:
        json.dump(recipe, handle, indent=2)
        handle.write("\n")
    return ShippedModel(weights, recipe)


__all__ = [
    "DEFAULT_NAME",
    "SHIPPED_FILES",
    "ShippedModel",
    "package_folder",
    "shipped_checkpoint",
    "is_default_name",
    "resolve_checkpoint",
    "ship_checkpoint",
]
