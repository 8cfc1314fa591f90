"""Datasets: METRO TSV read/write, augmentation, SMPL/MANO layers, mixing, synthetic data.

Import the pieces from their modules (``fastmetro.data.tsv``, ``.dataset``, ``.augment``,
``.body_models``); the names below are re-exported lazily so ``import fastmetro.data`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TSVDatasetWriter": "fastmetro.data.tsv",
    "TSVDataset": "fastmetro.data.tsv",
    "TSVFile": "fastmetro.data.tsv",
    "BadRowError": "fastmetro.data.tsv",
    "read_yaml": "fastmetro.data.tsv",
    "write_composite_yaml": "fastmetro.data.tsv",
    "shard_is_complete": "fastmetro.data.tsv",
    "MeshDataset": "fastmetro.data.dataset",
    "MixedDataset": "fastmetro.data.dataset",
    "AugmentConfig": "fastmetro.data.augment",
    "BodyModel": "fastmetro.data.body_models",
    "load_body_model": "fastmetro.data.body_models",
    "create_loader": "fastmetro.data.loader",
    "check_dataset": "fastmetro.data.check",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastmetro.data' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
