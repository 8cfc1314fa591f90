"""MANO hand helpers that do not need the licensed MANO model file."""

from __future__ import annotations

import numpy as np


def approximate_mano_regressor(template: np.ndarray) -> np.ndarray:
    """(16, 778) stand-in for MANO's J_regressor when MANO_RIGHT.pkl is not available.

    TODO(topology): replace with a real geometric approximation. For now every joint is the
    mean of all vertices, which keeps shapes valid but is not a usable joint position.
    """
    num_vertices = np.asarray(template).shape[0]
    return np.full((16, num_vertices), 1.0 / num_vertices)
