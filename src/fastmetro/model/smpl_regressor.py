"""The released optional SMPL parameter regressor (``FastMETRO-L-H64_smpl_*`` checkpoints).

An MLP on the detached intermediate mesh (B, V_1, 3) (SMPL: 1723 x 3 = 5169 inputs):
Linear(5169 -> 1024) + BatchNorm + ReLU, two residual blocks
[Linear + BatchNorm + ReLU + Linear + BatchNorm, add the input, ReLU], and Linear(1024 -> 24 * 9 + 10).
The first 216 values are 24 3 x 3 matrices, projected onto SO(3) (:func:`project_to_rotation`),
the last 10 are SMPL betas. 9,734,370 parameters for SMPL sizes; state-dict names as released
(``regressor.{0.fc_block.{0,1}, 1.fc_block.{0,1,3,4}, 2.fc_block.{0,1,3,4}, 3}``).
"""

from __future__ import annotations

import torch
from torch import nn

NUM_SMPL_JOINTS = 24
NUM_BETAS = 10


def project_to_rotation(matrices: torch.Tensor) -> torch.Tensor:
    """Nearest rotation of each (..., 3, 3) matrix, batched on the input's device.

    ``R = U V^T`` from the SVD ``M = U S V^T``, multiplied by ``det(R)`` (+-1) so the result is a
    proper rotation, as the released code does per matrix on the CPU.
    """
    u, _, vh = torch.linalg.svd(matrices)
    rotation = u @ vh
    return rotation * torch.linalg.det(rotation)[..., None, None]


class _FCBlock(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc_block = nn.Sequential(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_block(x)


class _FCResBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.fc_block = nn.Sequential(
            nn.Linear(features, features), nn.BatchNorm1d(features), nn.ReLU(),
            nn.Linear(features, features), nn.BatchNorm1d(features),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.fc_block(x))


class SMPLParameterRegressor(nn.Module):
    """(B, V_1, 3) intermediate mesh -> ``(rotmat (B, 24, 3, 3), betas (B, 10))``."""

    def __init__(self, num_vertices: int, hidden: int = 1024):
        super().__init__()
        self.regressor = nn.Sequential(
            _FCBlock(3 * num_vertices, hidden), _FCResBlock(hidden), _FCResBlock(hidden),
            nn.Linear(hidden, NUM_SMPL_JOINTS * 9 + NUM_BETAS),
        )  # fmt: skip

    def forward(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.regressor(vertices.detach().flatten(1))
        rotmat = project_to_rotation(values[:, : NUM_SMPL_JOINTS * 9].reshape(-1, NUM_SMPL_JOINTS, 3, 3).float())
        return rotmat.to(values.dtype), values[:, NUM_SMPL_JOINTS * 9 :]


__all__ = ["SMPLParameterRegressor", "project_to_rotation", "NUM_SMPL_JOINTS", "NUM_BETAS"]
