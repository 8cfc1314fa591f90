"""The model used when none is given (``fastmetro app`` without ``--checkpoint``).

One place decides it, :func:`find_default_checkpoint`, looking in order at:

1. the newest checkpoint ``make demo`` (``fastmetro demo --out demo_output``) trained:
   ``demo_output/run/{last,best}.safetensors`` under the current folder or ``$FASTMETRO_DEMO_DIR``.

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


def find_default_checkpoint(demo_dirs: list[Path] | None = None) -> DefaultCheckpoint:
    """The checkpoint to use when the user gives none (see the module docstring).

    Args:
        demo_dirs: folders to look in for ``make demo`` output (default :func:`demo_folders`).

    Raises:
        FastMetroError: no checkpoint found; the message says how to get one.
    """
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
    raise FastMetroError(
        f"no checkpoint given and none found (looked in {where}): pass --checkpoint MODEL.safetensors, "
        "or run `make demo` (about 20 minutes on a CPU) to train one into demo_output/run/"
    )


__all__ = ["DefaultCheckpoint", "find_default_checkpoint", "demo_folders", "DEMO_OUTPUT"]
