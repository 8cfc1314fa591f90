"""The one definition of the devices fastmetro runs on.

Two checks, for two moments: :func:`check_device_name` when a name is read (a config file, a
command line), which only asks whether the name is one of ours; :func:`resolve_device` when the
device is about to be used, which turns ``auto`` into a device and asks whether this machine has it.
Both raise a one-line :class:`FastMetroError` naming ``where`` the value came from.
"""

from __future__ import annotations

import torch

from fastmetro.errors import FastMetroError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # what the training loop and the predictor support
NAMES_HINT = "auto, cpu, cuda, cuda:N, mps, xpu or xpu:N"


def check_device_name(text: object, where: str = "device") -> torch.device | None:
    """The device ``text`` names (None for ``auto``), without asking whether this machine has it.

    Raises:
        FastMetroError: ``"<where> 'meta': not a device fastmetro runs on (use auto, cpu, ...)"``.
    """
    if text == "auto":
        return None
    try:
        device = torch.device(text)  # type: ignore[call-overload]  # anything: the check is the point
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES or (device.index is not None and device.index < 0):
        raise FastMetroError(f"{where} {text!r}: not a device fastmetro runs on (use {NAMES_HINT})")
    return device


def _count(kind: str) -> int:
    """How many devices of an accelerator ``kind`` this machine has (0 when its backend is absent)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "xpu":
        backend = getattr(torch, "xpu", None)
        return backend.device_count() if backend is not None and backend.is_available() else 0
    return 1 if torch.backends.mps.is_available() else 0  # mps: one device or none


def resolve_device(text: object, where: str = "device", local_rank: int = 0) -> torch.device:
    """A device this machine has: ``auto`` is ``cuda:<local_rank>`` when CUDA is available, else the
    CPU; a bare ``cuda`` or ``xpu`` is the ``local_rank``-th (one process per device under torchrun).

    Raises:
        FastMetroError: the name is not one of :data:`DEVICE_TYPES`, or the machine lacks the device.
    """
    device = check_device_name(text, where)
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        return device
    count = _count(device.type)
    if count == 0:
        raise FastMetroError(f"{where} {text!r}: {device.type.upper()} is not available on this machine")
    if device.type in ("cuda", "xpu") and device.index is None:
        device = torch.device(device.type, local_rank)
    if device.index is not None and device.index >= count:
        raise FastMetroError(f"{where} {text!r}: this machine has {count} {device.type.upper()} device(s)")
    return device


__all__ = ["DEVICE_TYPES", "check_device_name", "resolve_device"]
