"""Checks of inference options at the boundary (CLI flags, runner and app settings).

Each check raises :class:`~fastmetro.errors.FastMetroError` with one line naming the option as the
caller calls it (``--focal-length`` on the command line, ``focal_length`` from Python) and returns
the value converted (``float``/``int``/``torch.device``).
"""

from __future__ import annotations

import math

import torch

from fastmetro.devices import resolve_device
from fastmetro.errors import FastMetroError

#: Network input sizes accepted (pixels): the backbone needs 32 (one token); above 1024 the
#: decoder's cross-attention to (S/32)^2 image tokens no longer fits ordinary memory.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


def number(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """A finite float in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise FastMetroError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise FastMetroError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (result <= low if low_open else result < low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise FastMetroError(
            f"{name} must be {bound}" + (f" and <= {high:g}" if high is not None else "") + f", got {value!r}"
        )
    if high is not None and result > high:
        raise FastMetroError(f"{name} must be <= {high:g}, got {value!r}")
    return result


def positive_number(name: str, value, high: float | None = None) -> float:
    return number(name, value, 0.0, high, low_open=True)


def integer(name: str, value, low: int = 1, high: int | None = None) -> int:
    """An int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise FastMetroError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"between {low} and {high}"
        raise FastMetroError(f"{name} must be {span}, got {value}")
    return value


def image_size(name: str, value) -> int:
    return integer(name, value, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


def device(name: str, value) -> torch.device:
    """A device this machine has (``auto``: CUDA when there is one, else the CPU); see
    :func:`fastmetro.devices.resolve_device`."""
    return resolve_device(value, name)


__all__ = ["number", "positive_number", "integer", "image_size", "device", "MIN_IMAGE_SIZE", "MAX_IMAGE_SIZE"]
