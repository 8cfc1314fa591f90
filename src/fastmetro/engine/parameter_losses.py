"""Losses of the released optional SMPL parameter regressor (``--use_smpl_param_regressor``).

With predicted ``smpl_rotmat`` (B, 24, 3, 3) and ``smpl_betas`` (B, 10), and an SMPL layer:

- ``smpl_params``: MSE between the predicted rotations and the ground-truth pose's rotation
  matrices, plus 0.1 x MSE of the betas (samples with ``has_smpl``);
- ``smpl_vertices``: L1 between the SMPL mesh of the predicted parameters and the ground-truth
  mesh, both root-centred (samples with ``has_vertices``);
- ``smpl_joints_3d`` / ``smpl_joints_2d``: the topology's joints regressed from that mesh (root
  = the mesh root), against the 3D joints (mid-hip centred) and, through the predicted camera, the
  2D joints (as the main 2D terms).

``smpl_total`` is their sum; the released recipe weights it by 1000 and adds the main loss
(times 1e-8 for its Human3.6M stage, which trains only the regressor on a trained FastMETRO).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fastmetro.conventions import centre_joints, centre_mesh, weak_perspective_project
from fastmetro.data.body_models import axis_angle_to_matrix


def _mean_over(error: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Mean of (B, ...) ``error`` over the available samples (0 when there is none)."""
    mask = available.to(error.dtype).reshape(-1, *([1] * (error.dim() - 1)))
    return (error * mask).sum() / (mask.sum() * error[0].numel()).clamp_min(1.0)


class SMPLParameterLoss(nn.Module):
    """The regressor's terms; ``criterion`` supplies the topology buffers and 2D averaging."""

    def __init__(self, body_model: nn.Module):
        super().__init__()
        self.body_model = body_model

    def forward(self, outputs: dict, batch: dict, criterion) -> dict[str, torch.Tensor]:

        rotmat = outputs["smpl_rotmat"].float()
        betas = outputs["smpl_betas"].float()
        has_smpl = batch["has_smpl"].float().reshape(-1)
        gt_rotmat = axis_angle_to_matrix(batch["smpl_pose"].float().reshape(rotmat.shape[0], -1, 3))
        terms = {
            "smpl_params": _mean_over((rotmat - gt_rotmat).square(), has_smpl)
            + 0.1 * _mean_over((betas - batch["smpl_betas"].float()).square(), has_smpl)
        }
        mesh = centre_mesh(self.body_model(rotmat, betas).vertices.float(), criterion.root_regressor)
        terms["smpl_vertices"] = _mean_over(
            (mesh - batch["vertices"].float()).abs(), batch["has_vertices"].float().reshape(-1)
        )
        joints = torch.einsum("kv,bvc->bkc", criterion.joint_regressor, mesh)  # centred on the mesh root
        gt_joints = batch["joints_3d"].float()
        error_3d = (
            centre_joints(joints, criterion.root_joints) - centre_joints(gt_joints[..., :3], criterion.root_joints)
        ).abs() * gt_joints[..., 3:]
        terms["smpl_joints_3d"] = _mean_over(error_3d, batch["has_joints_3d"].float().reshape(-1))
        terms["smpl_joints_2d"] = criterion.joints_2d_term(
            weak_perspective_project(joints, outputs["camera"].float()), batch
        )
        terms["smpl_total"] = cast(
            torch.Tensor,
            sum(terms[name] for name in ("smpl_params", "smpl_vertices", "smpl_joints_3d", "smpl_joints_2d")),
        )
        return terms


__all__ = ["SMPLParameterLoss"]
