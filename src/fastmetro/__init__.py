"""fastmetro: FastMETRO 3D human and hand mesh recovery (Cho et al., ECCV 2022)."""

from fastmetro.errors import FastMetroError

__version__ = "0.1.0"


def create_model(*args, **kwargs):
    """Build a FastMETRO network; see :func:`fastmetro.model.presets.create_model`."""
    from fastmetro.model.presets import create_model as _create_model

    return _create_model(*args, **kwargs)


def __getattr__(name):
    # Heavy submodules are imported lazily so `import fastmetro` stays cheap.
    if name == "Predictor":
        from fastmetro.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'fastmetro' has no attribute {name!r}")


__all__ = ["FastMetroError", "create_model", "Predictor", "__version__"]
