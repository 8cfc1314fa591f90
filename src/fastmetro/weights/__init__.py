"""Which checkpoint "the default" is: the one resolver, below the model layer (it reads files and
JSON, never a network).

The default model ships inside the package, a FastMETRO trained by fastmetro on its own free
data, as three files in this folder (package data, so ``pip install`` carries them)::

    default.safetensors    the weights, float16 (loaded into float32 models)
    default.json           its ModelSpec (preset, overrides, topology, input size), as any checkpoint
    default_recipe.json    how it was made: config, data commands, seed, commit, training time,
                           images/s, metrics, and the SHA-256 of the weights

- :func:`shipped_checkpoint` finds and checks them (a missing or damaged file is a one-line
  :class:`~fastmetro.errors.FastMetroError`; the spec's fields are checked where it is read, by
  :func:`fastmetro.model.checkpoint.read_spec`);
- :func:`resolve_checkpoint` turns the name ``"default"`` into that path wherever a checkpoint path
  is accepted (``load_model("default")``, ``model.checkpoint=default``, ``--checkpoint default``);
- :func:`find_default_checkpoint` chooses the model when none is given (``fastmetro infer`` /
  ``fastmetro app`` without ``--checkpoint``, ``fastmetro.Predictor()``): the shipped model, else
  the newest checkpoint ``make demo`` trained (``demo_output/run/{last,best}.safetensors`` under the
  current folder or ``$FASTMETRO_DEMO_DIR``, for a package built without the shipped weights).

:func:`fastmetro.engine.ship.ship_checkpoint` writes the three files. Nothing is ever downloaded:
without a checkpoint the error says how to get one.
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


def sha256_of(path: Path) -> str:
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
    folder = Path(folder) if folder is not None else package_folder()
    weights, recipe_path = folder / WEIGHTS_FILE, folder / RECIPE_FILE
    fix = "reinstall fastmetro, or pass a checkpoint (--checkpoint MODEL.safetensors)"
    for path in (weights, weights.with_suffix(".json"), recipe_path):
        if not path.is_file():
            raise FastMetroError(f"{path}: the shipped default model's file is missing: {fix}")
    try:
        recipe = json.loads(recipe_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FastMetroError(f"{recipe_path}: the shipped default model's recipe is damaged ({error}): {fix}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("sha256"), str):
        raise FastMetroError(f"{recipe_path}: the shipped default model's recipe has no 'sha256' of the weights: {fix}")
    if sha256_of(weights) != recipe["sha256"]:
        raise FastMetroError(
            f"{weights}: the shipped default model's weights are damaged "
            f"(SHA-256 differs from {recipe_path.name}): {fix}"
        )
    return ShippedModel(weights, recipe)


def is_default_name(checkpoint: str | os.PathLike) -> bool:
    """True when ``checkpoint`` is the name ``"default"`` and no file of that name exists."""
    return str(checkpoint) == DEFAULT_NAME and not Path(checkpoint).exists()


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """``"default"`` -> the shipped model's path (checked); any other value -> itself as a path."""
    if is_default_name(checkpoint):
        return shipped_checkpoint().path
    return Path(checkpoint)


#: ``fastmetro demo``'s default ``--out``, and where its training run writes its checkpoints.
DEMO_OUTPUT = "demo_output"
DEMO_RUN = "run"
DEMO_CHECKPOINTS = ("last.safetensors", "best.safetensors")
#: ``shipped=`` default of :func:`find_default_checkpoint`: the package's own folder.
PACKAGE = "package"


@dataclass(frozen=True)
class DefaultCheckpoint:
    """A checkpoint chosen by :func:`find_default_checkpoint` and why (``origin``, one line)."""

    path: Path
    origin: str


def demo_folders() -> list[Path]:
    """Folders that may hold a ``make demo`` output: ``$FASTMETRO_DEMO_DIR``, then ``./demo_output``."""
    folders = []
    if os.environ.get("FASTMETRO_DEMO_DIR"):
        folders.append(Path(os.environ["FASTMETRO_DEMO_DIR"]))
    folders.append(Path.cwd() / DEMO_OUTPUT)
    return folders


def find_default_checkpoint(
    demo_dirs: list[Path] | None = None, shipped: str | os.PathLike | None = PACKAGE
) -> DefaultCheckpoint:
    """The checkpoint to use when the user gives none (see the module docstring).

    Args:
        demo_dirs: folders to look in for ``make demo`` output (default :func:`demo_folders`).
        shipped: the folder of the shipped model (default: this package's); None skips it.

    Raises:
        FastMetroError: a shipped file is missing or damaged (never a silent fall-back to another
            model), or no checkpoint is found; the message says how to get one.
    """
    if shipped is not None:
        folder = package_folder() if shipped == PACKAGE else Path(shipped)
        # The package carries the model: any of its files present means all must be, and sound.
        if any((folder / name).exists() for name in SHIPPED_FILES):
            model = shipped_checkpoint(folder)
            return DefaultCheckpoint(model.path, model.description)
    folders = demo_folders() if demo_dirs is None else [Path(d) for d in demo_dirs]
    found = [
        folder / DEMO_RUN / name
        for folder in folders
        for name in DEMO_CHECKPOINTS
        if (folder / DEMO_RUN / name).is_file() and (folder / DEMO_RUN / name).with_suffix(".json").is_file()
    ]
    if found:
        # Newest first; on equal times the order above (last before best) decides.
        newest = max(found, key=lambda path: (path.stat().st_mtime, -found.index(path)))
        return DefaultCheckpoint(newest, f"the newest checkpoint of `make demo`: {newest}")
    where = ", ".join(str(folder / DEMO_RUN) for folder in folders)
    if shipped is not None:
        where = f"the shipped model in {package_folder() if shipped == PACKAGE else shipped}, {where}"
    raise FastMetroError(
        f"no checkpoint given and none found (looked for {where}): pass --checkpoint MODEL.safetensors, "
        "reinstall fastmetro (it ships a default model), "
        "or run `make demo` (about 20 minutes on a CPU) to train one into demo_output/run/"
    )


__all__ = [
    "DEFAULT_NAME",
    "DEMO_OUTPUT",
    "PACKAGE",
    "SHIPPED_FILES",
    "DefaultCheckpoint",
    "ShippedModel",
    "demo_folders",
    "find_default_checkpoint",
    "package_folder",
    "shipped_checkpoint",
    "is_default_name",
    "resolve_checkpoint",
]
