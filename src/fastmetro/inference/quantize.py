"""Static int8 quantisation of an exported ONNX model (the lossy CPU path), with its calibration images.

:func:`quantize_onnx_static` rewrites an fp32 file from :func:`fastmetro.inference.export.export_onnx`
with ONNX Runtime's static quantiser: the convolutions (the backbone) get int8 weights, one scale
per output channel, and uint8 activations whose ranges are the min/max seen on calibration images
(QDQ format, which ONNX Runtime fuses into int8 kernels: VNNI / AMX on x86). The transformers and
heads stay fp32: quantising their matmuls as well adds error for little time (measured in
``fastmetro bench --lossy``).

Calibration images must look like what the model will see: :func:`calibration_images` reads the
user's crops, and :func:`calibration_photos` makes seeded crops of the photographs scikit-image
ships (real photos, no download; what the benchmark uses when it has no data).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fastmetro.errors import FastMetroError
from fastmetro.inference.images import load_image
from fastmetro.io import atomic_save

#: The photographs scikit-image ships in its wheel (colour first; grey ones are repeated to RGB).
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "camera", "clock")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalised(rgb: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) float32, resized bilinearly and normalised."""
    image = Image.fromarray(rgb).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1).copy()


def calibration_photos(
    count: int, size: int, seed: int = 0, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(count, 3, size, size) float32: seeded random square crops (40-100 % of the shorter side)
    of scikit-image's photographs, normalised like the model's inputs."""
    from skimage import data

    photos = []
    for name in _PHOTOS:
        photo = np.asarray(getattr(data, name)())
        photos.append(np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3])
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crops.append(_normalised(photo[top : top + side, left : left + side], size, mean, std))
    return np.stack(crops)


def calibration_images(
    paths: Sequence[str | os.PathLike], size: int, mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:  # fmt: skip
    """(N, 3, size, size) float32 from image files (person crops, each resized whole)."""
    if not paths:
        raise FastMetroError("int8 calibration needs at least one image")
    return np.stack([_normalised(load_image(path), size, mean, std) for path in paths])


def quantize_onnx_static(
    fp32_path: str | os.PathLike, out_path: str | os.PathLike, calibration: np.ndarray,
    op_types: Sequence[str] = ("Conv",),
) -> Path:  # fmt: skip
    """Write the static int8 version of ``fp32_path`` to ``out_path`` (atomically) and return it.

    ``calibration``: (N, 3, S, S) float32 model inputs (the activation ranges are their min/max).
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise FastMetroError("int8 quantisation needs onnxruntime (pip install 'fastmetro[export]')") from None
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or calibration.shape[1] != 3 or not len(calibration):
        raise FastMetroError(f"calibration images must be (N, 3, S, S) with N >= 1, got {calibration.shape}")

    class Images(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(calibration)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"images": row[None]}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="fastmetro-int8-") as workdir:
        prepared = Path(workdir) / "prepared.onnx"
        try:  # constant folding and shape inference first, as ONNX Runtime's quantiser advises
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)

            def write(tmp_name: str) -> None:
                quantize_static(
                    str(prepared), tmp_name, Images(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types), per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                )  # fmt: skip

            atomic_save(out_path, write)
        except FastMetroError:
            raise
        except Exception as error:  # noqa: BLE001 (onnx / onnxruntime raise many types)
            raise FastMetroError(f"{fp32_path}: int8 quantisation failed ({type(error).__name__}: {error})") from None
    return out_path


__all__ = ["calibration_images", "calibration_photos", "quantize_onnx_static"]
