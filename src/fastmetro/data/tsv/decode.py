"""Decoding the columns of a row: the base64 image, the label JSON and the hw column."""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from fastmetro.data.tsv.errors import BadRowError


def decode_image(encoded: str | bytes, source: str = "<image>", key: str = "?") -> np.ndarray:
    """base64 text (or raw encoded bytes) of a JPEG/PNG -> (H, W, 3) uint8 RGB."""
    import cv2

    if isinstance(encoded, str):
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise BadRowError(source, key, f"image column is not valid base64 ({error})") from None
    else:
        raw = encoded
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR) if raw else None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadRowError(source, key, "image bytes are not a decodable JPEG/PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def parse_label_json(text: str, source: str = "<label>", key: str = "?") -> dict:
    """The METRO label column: a JSON list holding one dict (a bare dict is accepted too)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError) as error:
        raise BadRowError(source, key, f"label is not valid JSON ({error.msg if hasattr(error, 'msg') else error})") from None
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict):
            raise BadRowError(source, key, f"label must be a JSON list holding one dict, got a list of {len(value)}")
        value = value[0]
    if not isinstance(value, dict):
        raise BadRowError(source, key, f"label must be a JSON dict (or a list of one), got {type(value).__name__}")
    return value


def parse_hw(text: str, source: str = "<hw>", key: str = "?") -> tuple[int, int]:
    """``[{"height": H, "width": W}]`` or ``"H W"`` -> (H, W)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        value = text
    try:
        if isinstance(value, list):
            value = value[0]
        if isinstance(value, dict):
            return int(value["height"]), int(value["width"])
        height, width = str(value).split()
        return int(height), int(width)
    except (KeyError, ValueError, IndexError, TypeError):
        raise BadRowError(source, key, f"hw column is not [{{'height': H, 'width': W}}] or 'H W': {text[:60]!r}") from None
