"""The model used when none is given (``fastmetro infer`` / ``fastmetro app`` without
``--checkpoint``, ``fastmetro.Predictor()`` without a checkpoint).

One place decides it, :func:`find_default_checkpoint`, looking in order at:

1. the model shipped inside the package (:mod:`fastmetro.weights`): found whenever fastmetro is
   installed with its package data; a missing or damaged shipped file is a one-line error
   (never a silent fall-back to another model);
2. the newest checkpoint ``make demo`` (``fastmetro demo --out demo_output``) trained:
   ``demo_output/run/{last,best}.safetensors`` under the current folder or ``$FASTMETRO_DEMO_DIR``
   (for a package built without the shipped weights).

Nothing is ever downloaded: without a checkpoint the error says how to get one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fastmetro.errors import FastMetroError

#: ``fastmetro demo``'s default ``--out`` (see fastmetro.engine.commands).
DEMO_OUTPUT = "demo_output"
#: Where the demo's training run writes its checkpoints, inside the demo folder.
DEMO_RUN = "run"
DEMO_CHECKPOINTS = ("last.safetensors", "best.safetensors")


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


#: ``shipped=`` default of :func:`find_default_checkpoint`: the package's own folder.
PACKAGE = "package"


def find_default_checkpoint(
    demo_dirs: list[Path] | None = None, shipped: str | os.PathLike | None = PACKAGE
) -> DefaultCheckpoint:
    """The checkpoint to use when the user gives none (see the module docstring).

    Args:
        demo_dirs: folders to look in for ``make demo`` output (default :func:`demo_folders`).
        shipped: the folder of the shipped model (default: the package's, :mod:`fastmetro.weights`);
            None skips it (only ``make demo`` output).

    Raises:
        FastMetroError: a shipped file is missing or damaged, or no checkpoint is found; the
            message says how to get one.
    """
    from fastmetro import weights

    if shipped is not None:
        folder = weights.package_folder() if shipped == PACKAGE else Path(shipped)
        # The package carries the model: any of its files present means all must be, and sound.
        if any((folder / name).exists() for name in weights.SHIPPED_FILES):
            model = weights.shipped_checkpoint(folder)
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
        where = f"the shipped model in {weights.package_folder() if shipped == PACKAGE else shipped}, {where}"
    raise FastMetroError(
        f"no checkpoint given and none found (looked for {where}): pass --checkpoint MODEL.safetensors, "
        "reinstall fastmetro (it ships a default model), "
        "or run `make demo` (about 20 minutes on a CPU) to train one into demo_output/run/"
    )


__all__ = ["DefaultCheckpoint", "find_default_checkpoint", "demo_folders", "DEMO_OUTPUT", "PACKAGE"]
