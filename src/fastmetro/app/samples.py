"""Sample images for the page's gallery, from files that ship with the dependencies.

scikit-image bundles two photographs of a person (NASA's astronaut Eileen Collins and the
"cameraman"); a ``make demo`` output adds its held-out synthetic test images with their boxes.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# (scikit-image loader, file name, label, person box x, y, w, h in pixels)
BUNDLED = (
    ("astronaut", "astronaut.png", "astronaut (scikit-image)", (120, 20, 300, 490)),
    ("camera", "cameraman.png", "cameraman (scikit-image)", (0, 60, 340, 452)),
)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    boxes: str  # as typed in the page: "x, y, w, h"


def _box_text(box) -> str:
    return ", ".join(f"{float(v):.0f}" for v in box)


def bundled_samples(folder: Path) -> list[Sample]:
    """scikit-image's people photographs, written as PNGs into ``folder``."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for loader, file_name, label, box in BUNDLED:
        pixels = np.asarray(getattr(skimage.data, loader)())
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        path = folder / file_name
        if not path.is_file():
            Image.fromarray(pixels).save(path)
        samples.append(Sample(path, label, _box_text(box)))
    return samples


def demo_samples(demo_dir: Path, folder: Path, limit: int = 4) -> list[Sample]:
    """``make demo``'s held-out test images (``demo_dir/test_images/*.png`` + ``boxes.json``),
    copied into ``folder`` (the page serves files from the app's work folder only); [] if none."""
    source = Path(demo_dir) / "test_images"
    try:
        boxes = json.loads((source / "boxes.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(boxes, dict):
        return []
    samples = []
    for path in sorted(source.glob("test_*.png"))[:limit]:
        entries = boxes.get(path.name)
        if not (isinstance(entries, list) and entries and isinstance(entries[0], list) and len(entries[0]) == 4):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / f"demo_{path.name}"
        shutil.copyfile(path, copy)
        samples.append(Sample(copy, f"{path.stem} (demo test set)", _box_text(entries[0])))
    return samples


__all__ = ["Sample", "bundled_samples", "demo_samples", "BUNDLED"]
