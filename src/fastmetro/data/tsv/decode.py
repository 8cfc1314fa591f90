"""Decoding the columns of a row: the base64 image, the label JSON and the hw column."""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from typing import Any

import numpy as np

from fastmetro.data.tsv.errors import BadRowError

# Images are refused above Pillow's default decompression-bomb limit (2 x 89,478,485 pixels), read
# from the header before anything is decoded: a small file must not make a worker allocate gigabytes.
MAX_IMAGE_PIXELS = 178_956_970
# Height/width in an hw column: positive, at most this.
MAX_SIDE = 1_000_000


def _declared_pixels(raw: bytes) -> float | None:
    """Pixel count from the image header (Pillow reads only the header), None if Pillow cannot tell."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own limit
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return float("inf")
    except Exception:  # noqa: BLE001 (not a format Pillow knows: cv2 decides below)
        return None
    return float(width) * float(height)


def decode_image(encoded: str | bytes, source: str | os.PathLike = "<image>", key: str = "?") -> np.ndarray:
    """base64 text (or raw encoded bytes) of a JPEG/PNG -> (H, W, 3) uint8 RGB.

    Raises :class:`BadRowError` for invalid base64, undecodable or truncated bytes, and images
    whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels (checked before decoding).
    """
    import cv2

    if isinstance(encoded, str):
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise BadRowError(source, key, f"image column is not valid base64 ({error})") from None
    else:
        raw = encoded
    pixels = _declared_pixels(raw) if raw else None
    if pixels is not None and pixels > MAX_IMAGE_PIXELS:
        raise BadRowError(
            source,
            key,
            f"image header declares {pixels:.0f} pixels, more than {MAX_IMAGE_PIXELS} (a decompression bomb?)",
        )
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR) if raw else None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadRowError(source, key, "image bytes are not a decodable JPEG/PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def parse_label_json(text: str, source: str | os.PathLike = "<label>", key: str = "?") -> dict:
    """The METRO label column: a JSON list holding one dict (a bare dict is accepted too)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, over-long integers, deep nesting
        reason = getattr(error, "msg", None) or type(error).__name__
        raise BadRowError(source, key, f"label is not valid JSON ({reason})") from None
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict):
            raise BadRowError(source, key, f"label must be a JSON list holding one dict, got a list of {len(value)}")
        value = value[0]
    if not isinstance(value, dict):
        raise BadRowError(source, key, f"label must be a JSON dict (or a list of one), got {type(value).__name__}")
    return value


def _side(value) -> int | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        return None
    return value


def parse_hw(text: str, source: str | os.PathLike = "<hw>", key: str = "?") -> tuple[int, int]:
    """``[{"height": H, "width": W}]`` or ``"H W"`` -> (H, W), positive integers."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = text
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        sides: list[Any] = [value.get("height"), value.get("width")]
        sides = [None if isinstance(side, str) else side for side in sides]  # JSON strings are not sizes
    elif isinstance(value, str) and len(value.split()) == 2:
        sides = value.split()
    else:
        sides = [None, None]
    height, width = (_side(side) for side in sides)
    if height is None or width is None:
        raise BadRowError(
            source,
            key,
            f"hw column is not [{{'height': H, 'width': W}}] or 'H W' with positive integers: {text[:60]!r}",
        )
    return height, width
