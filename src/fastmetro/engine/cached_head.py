"""Training with a frozen backbone on cached feature maps (``data.cached_feature_passes``).

A frozen pretrained encoder (``optim.backbone_lr_scale: 0``) computes the same feature map for
the same crop at every step, and on a CPU it is most of a step's time. So each augmented crop of
the training set goes through the backbone once: ``passes`` times over the set, each pass with
fresh augmentation draws (flip, rotation, scale, colour noise), and the trainer then samples
from these feature maps and runs only :meth:`FastMETRO.forward_from_features`. Evaluation still
runs the whole model on the images.

Each pass is written to ``OUTPUT_DIR/feature_cache/pass_NN.safetensors`` (atomically) and read
back on a rerun, so an interrupted run resumes without recomputing finished passes. Feature maps
and vertices are stored as float16 (features of a ReLU6 encoder: rounding ~1e-3 relative;
vertices: < 0.5 mm).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fastmetro.data.loader import create_loader
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_save

logger = logging.getLogger(__name__)

#: Sample keys kept in float16 (large per-sample tensors); every other tensor keeps its dtype.
HALF_KEYS = ("features", "vertices")


class CachedFeatures(torch.utils.data.Dataset):
    """Samples ``{"features": (C, h, w) float32, <the dataset's tensor labels>}`` from cached passes."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        sizes = {len(value) for value in tensors.values()}
        if len(sizes) != 1 or "features" not in tensors:
            raise FastMetroError("feature cache: every entry needs one row per sample, and 'features' must be there")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["features"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index].float() if key in HALF_KEYS else value[index] for key, value in self.tensors.items()}


@torch.no_grad()
def compute_pass(model, dataset, batch_size: int, num_workers: int, seed: int) -> dict[str, torch.Tensor]:
    """One pass over ``dataset`` (its own augmentation draws): backbone features and tensor labels."""
    loader = create_loader(dataset, batch_size=batch_size, num_workers=num_workers, seed=seed)
    model.backbone.eval()
    device = next(model.parameters()).device
    columns: dict[str, list[torch.Tensor]] = {}
    started, done = time.perf_counter(), 0
    for batch in loader:
        columns.setdefault("features", []).append(model.backbone_features(batch["image"].to(device)).half().cpu())
        for key, value in batch.items():
            if key != "image" and isinstance(value, torch.Tensor):
                columns.setdefault(key, []).append(value.half() if key in HALF_KEYS else value)
        done += len(batch["image"])
        if done % (20 * batch_size) < batch_size:
            logger.info(
                "feature cache: %d / %d crops, %.1f crops/s", done, len(dataset), done / (time.perf_counter() - started)
            )
    return {key: torch.cat(values).contiguous() for key, values in columns.items()}


def cached_features(model, dataset, passes: int, cache_dir: Path, batch_size: int, num_workers: int, seed: int):
    """:class:`CachedFeatures` of ``passes`` augmented passes over ``dataset``, computed or read back."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for index in range(passes):
        path = cache_dir / f"pass_{index:02d}.safetensors"
        if path.is_file():
            try:
                part = load_file(str(path))
            except Exception as error:  # noqa: BLE001 (safetensors raises several types on bad files)
                raise FastMetroError(f"{path}: unreadable feature cache ({error}); delete it to recompute") from None
            if len(part["features"]) != len(dataset):
                raise FastMetroError(f"{path}: {len(part['features'])} cached crops, the dataset has {len(dataset)}")
            logger.info("feature cache: read %s", path)
        else:
            started = time.perf_counter()
            # Each pass has its own worker seeds, hence its own augmentation draws.
            part = compute_pass(model, dataset, batch_size, num_workers, seed * 1009 + index)
            atomic_save(path, partial(save_file, part))
            logger.info("feature cache: pass %d in %.0f s -> %s", index, time.perf_counter() - started, path)
        parts.append(part)
    return CachedFeatures({key: torch.cat([part[key] for part in parts]) for key in parts[0]})


__all__ = ["CachedFeatures", "cached_features", "compute_pass", "HALF_KEYS"]
