"""fastmetro: FastMETRO 3D human and hand mesh recovery (Cho et al., ECCV 2022)."""

import importlib

from fastmetro.errors import FastMetroError

__version__ = "0.2.0"


def create_model(*args, **kwargs):
    """Build a FastMETRO network by preset name; see :func:`fastmetro.model.factory.create_model`."""
    from fastmetro.model.factory import create_model as _create_model

    return _create_model(*args, **kwargs)


def load_model(*args, **kwargs):
    """Build the network stored in a checkpoint; see :func:`fastmetro.model.factory.load_model`."""
    from fastmetro.model.factory import load_model as _load_model

    return _load_model(*args, **kwargs)


_LAZY = {
    "Predictor": ("fastmetro.inference.predictor", "Predictor"),
    "Rigger": ("fastmetro.inference.rigging", "Rigger"),
}
_SUBPACKAGES = ("topology", "model", "data", "inference", "engine", "metrics", "conventions", "render", "rig")


def __getattr__(name):
    # Heavy submodules are imported lazily so `import fastmetro` stays cheap; both
    # `fastmetro.topology.load(...)` and `from fastmetro import topology` work.
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"fastmetro.{name}")
    raise AttributeError(f"module 'fastmetro' has no attribute {name!r}")


__all__ = ["FastMetroError", "create_model", "load_model", "Predictor", "Rigger", "__version__"]
