"""Temporal smoothing of a track's per-frame results: the One-Euro filter (Casiez et al., CHI 2012).

The One-Euro filter is an exponential smoother whose cutoff frequency rises with the signal's
speed: still signals are smoothed hard (little jitter), fast ones lightly (little lag).
Per sample, with ``dt`` the time since the previous sample (seconds)::

    alpha(fc)  = 1 / (1 + tau / dt),   tau = 1 / (2 pi fc)        (fc in Hz)
    dx         = alpha(d_cutoff) * (x - x_prev) / dt + (1 - alpha(d_cutoff)) * dx_prev
    fc         = min_cutoff + beta * |dx|
    x_hat      = alpha(fc) * x + (1 - alpha(fc)) * x_hat_prev

Parameters (units):

* ``min_cutoff`` (Hz): the cutoff of a still signal. Lower: smoother, more lag.
* ``beta`` (s / unit of the signal, here s/m): how fast the cutoff rises with speed; 0 makes the
  filter a plain first-order low-pass at ``min_cutoff``.
* ``d_cutoff`` (Hz): the cutoff of the low-pass on the speed estimate.

Arrays of any shape are filtered element by element; the speed that sets the cutoff is each
element's own. ``offline`` runs the filter forward and then backward over the forward result
(a forward-backward pass like ``scipy.signal.filtfilt``): the two lags cancel, zero lag, for
whole clips; ``causal`` uses only past frames (live video).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastmetro.errors import FastMetroError

MODES = ("none", "causal", "offline")


def alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
    """The exponential smoother's weight of the new sample for a cutoff (Hz) and step (s)."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass
class OneEuroFilter:
    """A causal One-Euro filter over arrays of one shape (see the module docstring).

    Args:
        min_cutoff: Hz. beta: s per unit of the signal. d_cutoff: Hz.
    """

    min_cutoff: float = 1.0
    beta: float = 0.5
    d_cutoff: float = 1.0

    def __post_init__(self):
        for name in ("min_cutoff", "d_cutoff"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FastMetroError(f"{name} must be a positive number of Hz, got {value!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise FastMetroError(f"beta must be a number >= 0, got {self.beta!r}")
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        """The filtered value of sample ``x`` taken ``dt`` seconds after the previous one."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._dx is None or self._x.shape != x.shape:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        if not dt > 0:
            raise FastMetroError(f"dt must be > 0 seconds, got {dt!r}")
        a_d = alpha(self.d_cutoff, dt)
        self._dx = a_d * (x - self._x) / dt + (1.0 - a_d) * self._dx
        a = alpha(self.min_cutoff + self.beta * np.abs(self._dx), dt)
        self._x = a * x + (1.0 - a) * self._x
        return self._x.copy()


def smooth_sequence(
    values: Sequence[np.ndarray] | np.ndarray,
    times: Sequence[float] | np.ndarray,
    mode: str = "causal",
    min_cutoff: float = 1.0,
    beta: float = 0.5,
    d_cutoff: float = 1.0,
) -> np.ndarray:
    """``values`` (T, ...) sampled at ``times`` (T,) seconds, smoothed by ``mode`` (:data:`MODES`)."""
    if mode not in MODES:
        raise FastMetroError(f"smoothing must be one of {MODES}, got {mode!r}")
    values = np.asarray(values, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if len(values) != len(times):
        raise FastMetroError(f"{len(values)} values but {len(times)} times")
    if mode == "none" or len(values) < 2:
        return values.copy()
    if np.any(np.diff(times) <= 0):
        raise FastMetroError("times must increase")

    def forward(sequence: np.ndarray, steps: np.ndarray) -> np.ndarray:
        one_euro = OneEuroFilter(min_cutoff, beta, d_cutoff)
        out = np.empty_like(sequence)
        out[0] = one_euro(sequence[0], 1.0)
        for index in range(1, len(sequence)):
            out[index] = one_euro(sequence[index], float(steps[index - 1]))
        return out

    steps = np.diff(times)
    result = forward(values, steps)
    if mode == "offline":
        result = forward(result[::-1], steps[::-1])[::-1]
    return result


__all__ = ["OneEuroFilter", "alpha", "smooth_sequence", "MODES"]
