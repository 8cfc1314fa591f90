"""Inference on user images: crops and paste-back (camera.py), person boxes, the Predictor, the
runner over many inputs, detectors, output writers, attention maps (paper Figure 6) and
ONNX/TorchScript export.

Heavy modules are imported on first use: ``from fastmetro.inference.predictor import Predictor``.
"""

from __future__ import annotations

_EXPORTS = {
    "Predictor": "fastmetro.inference.predictor",
    "PersonBox": "fastmetro.inference.boxes",
    "PersonPrediction": "fastmetro.inference.predictor",
    "ImagePrediction": "fastmetro.inference.predictor",
    "load_model": "fastmetro.model.factory",
    "TorchvisionDetector": "fastmetro.inference.detector",
    "Detection": "fastmetro.inference.detector",
    "load_image": "fastmetro.inference.images",
    "InferenceRunner": "fastmetro.inference.runner",
    "ImageResult": "fastmetro.inference.runner",
    "Failure": "fastmetro.inference.runner",
    "find_default_checkpoint": "fastmetro.weights",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastmetro.inference' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
