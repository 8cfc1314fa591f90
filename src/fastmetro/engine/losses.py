"""The training criterion (paper Eq. 1-6, weights as in the released code), apart from the model.

:class:`MeshCriterion` takes the model's output dict and a batch of samples (see
docs/architecture.md) and returns every term, for logging, and their weighted sum ``"total"``.

Every prediction is first put in the camera's frame (:func:`fastmetro.conventions.root_centred`,
as the released training step does): joint-token joints minus their joint root (body: mid-hip,
hand: wrist), the mesh-regressed joints and every mesh level minus the root point regressed from
the predicted fine mesh (SMPL: the H36M pelvis). So every term is invariant to a rigid
translation of the prediction, and the camera means what the released camera means.

Terms (all L1; a batch with no sample that has the ground truth contributes exactly 0):

- ``joints_3d`` / ``mesh_joints_3d``: 3D joints from the joint tokens / regressed from the fine
  mesh, both re-centred on the root joints (mean of ``topology.root_joints``) as the ground truth
  is, weighted by the ground-truth per-joint confidence (4th column); averaged over the samples
  with ``has_joints_3d``.
- ``joints_2d`` / ``mesh_joints_2d``: the root-centred joints projected with the predicted
  weak-perspective camera ``s * (X_xy + t)``, against crop-normalised 2D keypoints weighted by
  visibility. Released averaging (``joints_2d_average="batch"``): the mean over the whole batch,
  samples without 2D labels included (their zero weight only removes them from the sum);
  ``"available"`` averages over the samples with ``has_joints_2d`` instead.
- ``vertices``: weighted sum over mesh levels of the L1 vertex error (released: 0.25 coarse, 0.5
  intermediate, 0.25 fine for three levels; 0.5/0.5 for two); the ground-truth levels are
  selections of the ground-truth fine mesh; averaged over the samples with ``has_vertices``.
- ``edge`` / ``normal`` (optional): edge-length and face-normal consistency on one mesh level
  (released: the intermediate level of SMPL with its released 3,451 faces, the fine level of
  MANO), edge lengths ``sqrt(d^2 + 1e-8)`` as released, gated by ``has_vertices``.
- ``laplacian`` (optional, not in the release): L1 between the uniform Laplacian coordinates
  (each vertex minus the mean of its mesh neighbours) of the predicted and ground-truth coarse
  mesh. A coarse vertex pushed to the wrong side of its neighbours is a fold that every finer
  level inherits through the upsampling; vertex L1 barely sees it, this term does.

main = w_j3d (joints_3d + mesh_joints_3d) + w_v vertices + w_j2d (joints_2d + mesh_joints_2d)
       + w_en (edge_length_weight * edge + edge_self_weight * edge_self + normal_weight * normal)
       + w_lap laplacian
total = main_weight * main (+ smpl_weight * smpl_total for models with the SMPL parameter
        regressor and a body model: :mod:`fastmetro.engine.parameter_losses`)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fastmetro.conventions import centre_joints, root_centred, weak_perspective_project
from fastmetro.engine.parameter_losses import SMPLParameterLoss

JOINTS_2D_AVERAGES = ("batch", "available")


@dataclass
class LossConfig:
    """Loss weights; ``None`` means "as released for this topology"."""

    joints_3d_weight: float = 1000.0
    vertices_weight: float = 100.0
    joints_2d_weight: float = 100.0
    # Per-level vertex weights, index 0 = fine. None: (0.25, 0.5, 0.25) for 3 levels, (0.5, 0.5) for 2.
    level_weights: list[float] | None = None
    # Edge/normal regulariser (released: on); its level None = intermediate (3 levels) or fine.
    edge_normal_weight: float = 100.0
    edge_level: int | None = None
    edge_length_weight: float | None = None  # released: 5.0 body, 1.0 hand
    edge_self_weight: float | None = None  # mean predicted edge length; released: 1e-4 body, 0 hand
    normal_weight: float = 0.1
    # Laplacian-coordinate term on the coarse mesh (not in the release: 0 keeps the released loss).
    laplacian_weight: float = 0.0
    # "batch": released mean over the whole batch; "available": over samples with 2D labels.
    joints_2d_average: str = "batch"
    # Edge lengths are sqrt(d^2 + edge_epsilon) (released: 1e-8, keeps the gradient finite at 0).
    edge_epsilon: float = 1e-8
    # SMPL parameter regressor (released: 1000 x its losses + the main loss, whose weight the
    # released Human3.6M stage sets to 1e-8 to train only the regressor).
    smpl_weight: float = 1000.0
    main_weight: float = 1.0

    def __post_init__(self):
        if self.joints_2d_average not in JOINTS_2D_AVERAGES:
            raise ValueError(f"joints_2d_average must be one of {JOINTS_2D_AVERAGES}, got {self.joints_2d_average!r}")


def default_level_weights(num_levels: int) -> list[float]:
    """Released vertex-loss split over levels (index 0 = fine mesh)."""
    if num_levels == 3:
        return [0.25, 0.5, 0.25]
    if num_levels == 2:
        return [0.5, 0.5]
    return [1.0 / num_levels] * num_levels


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Mean of ``weight * |pred - target|`` over the available samples (0 if there is none).

    Args:
        pred, target: (B, N, C).
        weight: (B, N, 1) per-point weight (confidence / visibility), or a broadcastable tensor.
        available: (B,) 0/1 availability flags.
    Returns:
        Scalar: sum over available samples of the weighted error / (num_available * N * C), as the
        released code's ``(conf * L1(pred, gt)).mean()`` on the selected samples.
    """
    mask = available.to(pred.dtype).reshape(-1, *([1] * (pred.dim() - 1)))
    error = (weight * (pred - target).abs() * mask).sum()
    count = mask.sum() * pred[0].numel()
    return error / count.clamp_min(1.0)


def batch_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(weight * |pred - target|).mean()`` over the whole batch (the released 2D keypoint loss)."""
    return (weight * (pred - target).abs()).expand_as(pred).mean() if pred.numel() else pred.new_zeros(())


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) sorted unique vertex pairs of a triangle mesh's edges."""
    faces = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(edges, axis=1), axis=0)


def _uniform_laplacian(adjacency) -> torch.Tensor:
    """(V, V) dense float32 ``I - D^-1 A`` of a sparse 0/1 adjacency (isolated vertices: 0 rows)."""
    dense = np.asarray(adjacency.todense(), dtype=np.float64)
    degree = dense.sum(axis=1, keepdims=True)
    operator = np.eye(len(dense)) - dense / np.maximum(degree, 1.0)
    operator[degree[:, 0] == 0] = 0.0
    return torch.from_numpy(operator.astype(np.float32))


class MeshCriterion(nn.Module):
    """FastMETRO's losses for one topology.

    Args:
        topology: the :class:`~fastmetro.topology.Topology` the model predicts.
        config: weights; defaults reproduce the released body/hand recipes.
    """

    joint_regressor: torch.Tensor
    root_regressor: torch.Tensor
    edge_faces: torch.Tensor
    edges: torch.Tensor
    laplacian: torch.Tensor

    def __init__(self, topology, config: LossConfig | None = None, body_model: nn.Module | None = None):
        super().__init__()
        config = config or LossConfig()
        self.config = config
        self.num_levels = topology.num_levels
        self.root_joints = tuple(topology.root_joints)
        self.level_weights = list(config.level_weights or default_level_weights(self.num_levels))
        if len(self.level_weights) != self.num_levels:
            raise ValueError(f"level_weights has {len(self.level_weights)} entries for {self.num_levels} levels")
        three_levels = self.num_levels >= 3
        self.edge_level = config.edge_level if config.edge_level is not None else topology.edge_loss_level
        self.edge_length_weight = (
            config.edge_length_weight if config.edge_length_weight is not None else (5.0 if three_levels else 1.0)
        )
        self.edge_self_weight = (
            config.edge_self_weight if config.edge_self_weight is not None else (1e-4 if three_levels else 0.0)
        )
        as_float = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
        self.register_buffer("joint_regressor", as_float(topology.joint_regressor), persistent=False)
        self.register_buffer("root_regressor", as_float(topology.root_regressor), persistent=False)
        for level in range(self.num_levels):
            indices = torch.from_numpy(np.array(topology.level_indices(level), dtype=np.int64))
            self.register_buffer(f"level_indices_{level}", indices, persistent=False)
        faces = np.asarray(topology.edge_loss_faces(self.edge_level), dtype=np.int64)
        self.register_buffer("edge_faces", torch.from_numpy(faces.copy()), persistent=False)
        self.register_buffer("edges", torch.from_numpy(unique_edges(faces)), persistent=False)
        # Dense (V_L, V_L): built only when the term is on (a custom coarse level may be large).
        laplacian = _uniform_laplacian(topology.coarse_adjacency) if config.laplacian_weight > 0 else torch.zeros(0, 0)
        self.register_buffer("laplacian", laplacian, persistent=False)
        self.parameter_loss = None
        if body_model is not None:
            self.parameter_loss = SMPLParameterLoss(body_model)

    # ------------------------------------------------------------------ helpers
    def _gt_level(self, gt_fine: torch.Tensor, level: int) -> torch.Tensor:
        return gt_fine.index_select(1, getattr(self, f"level_indices_{level}"))

    def edge_losses(self, pred: torch.Tensor, gt: torch.Tensor, available: torch.Tensor) -> dict[str, torch.Tensor]:
        """Edge-length, mean-edge-length and normal losses on one level: (B, V, 3) metres."""
        mask = available.to(pred.dtype)
        count = mask.sum().clamp_min(1.0)
        first, second = self.edges[:, 0], self.edges[:, 1]
        epsilon = self.config.edge_epsilon
        pred_length = ((pred[:, first] - pred[:, second]).square().sum(-1) + epsilon).sqrt()  # (B, E)
        gt_length = ((gt[:, first] - gt[:, second]).square().sum(-1) + epsilon).sqrt()
        edge = ((pred_length - gt_length).abs().mean(dim=1) * mask).sum() / count
        edge_self = (pred_length.mean(dim=1) * mask).sum() / count
        faces = self.edge_faces
        gt_normal = torch.cross(
            gt[:, faces[:, 1]] - gt[:, faces[:, 0]], gt[:, faces[:, 2]] - gt[:, faces[:, 0]], dim=-1
        )
        gt_normal = nn.functional.normalize(gt_normal, dim=-1)
        cosines = []
        for a, b in ((0, 1), (1, 2), (2, 0)):
            direction = nn.functional.normalize(pred[:, faces[:, b]] - pred[:, faces[:, a]], dim=-1)
            cosines.append((direction * gt_normal).sum(dim=-1).abs())  # (B, F)
        normal = ((torch.stack(cosines, dim=-1).mean(dim=(1, 2))) * mask).sum() / count
        return {"edge": edge, "edge_self": edge_self, "normal": normal}

    def laplacian_loss(self, pred: torch.Tensor, gt: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Mean L1 between the Laplacian coordinates of (B, V_L, 3) coarse meshes (metres)."""
        delta = pred - gt  # the operator is linear: L(pred) - L(gt) = L(pred - gt)
        laplacian = torch.einsum("uv,bvc->buc", self.laplacian.to(delta.dtype), delta)
        return masked_l1(laplacian, torch.zeros_like(laplacian), torch.ones((), dtype=delta.dtype,
                         device=delta.device), available)  # fmt: skip

    # ------------------------------------------------------------------ forward
    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Compute every term and the weighted ``total``.

        Args:
            outputs: model output dict (``camera`` (B, 3), ``joints`` (B, K, 3), ``mesh_joints``,
                ``vertices_by_level`` (fine first), metres).
            batch: ``joints_3d`` (B, K, 4), ``joints_2d`` (B, K, 3), ``vertices`` (B, V0, 3),
                ``has_joints_3d`` / ``has_joints_2d`` / ``has_vertices`` (B,).
        Returns:
            dict of scalar tensors: each term, ``vertices_level{l}``, and ``total``.
        """
        # Losses in float32 even under autocast: L1 of metre-scale values needs the mantissa.
        camera = outputs["camera"].float()
        fine = outputs["vertices_by_level"][0].float()
        mesh_joints = outputs.get("mesh_joints")
        mesh_joints = torch.einsum("kv,bvc->bkc", self.joint_regressor, fine) if mesh_joints is None else mesh_joints
        pred = root_centred(
            {"joints": outputs["joints"].float(), "mesh_joints": mesh_joints.float(),
             "vertices_by_level": [v.float() for v in outputs["vertices_by_level"]]},
            self.root_regressor, self.root_joints,
        )  # fmt: skip
        gt_joints_3d = batch["joints_3d"].float()
        gt_fine = batch["vertices"].float()  # centred on its root by the dataset (sample contract)
        has_3d = batch["has_joints_3d"].float().reshape(-1)
        has_vertices = batch["has_vertices"].float().reshape(-1)

        terms: dict[str, torch.Tensor] = {}
        gt_xyz = centre_joints(gt_joints_3d[..., :3], self.root_joints)
        confidence = gt_joints_3d[..., 3:]
        # Mesh joints are centred on the mesh root; the 3D term compares joint sets on the mid-hip.
        for name, joints in (("joints", pred["joints"]), ("mesh_joints", pred["mesh_joints"])):
            terms[f"{name}_3d"] = masked_l1(centre_joints(joints, self.root_joints), gt_xyz, confidence, has_3d)
            terms[f"{name}_2d"] = self.joints_2d_term(weak_perspective_project(joints, camera), batch)

        levels = pred["vertices_by_level"]
        gt_levels = [gt_fine] + [self._gt_level(gt_fine, level) for level in range(1, self.num_levels)]
        ones = torch.ones((), dtype=fine.dtype, device=fine.device)
        vertices = fine.new_zeros(())
        for level, weight in enumerate(self.level_weights):
            term = masked_l1(levels[level], gt_levels[level], ones, has_vertices)
            terms[f"vertices_level{level}"] = term
            vertices = vertices + weight * term
        terms["vertices"] = vertices

        config = self.config
        total = (
            config.joints_3d_weight * (terms["joints_3d"] + terms["mesh_joints_3d"])
            + config.vertices_weight * vertices
            + config.joints_2d_weight * (terms["joints_2d"] + terms["mesh_joints_2d"])
        )
        if config.edge_normal_weight > 0:
            terms.update(self.edge_losses(levels[self.edge_level], gt_levels[self.edge_level], has_vertices))
            edge_normal = (
                self.edge_length_weight * terms["edge"]
                + self.edge_self_weight * terms["edge_self"]
                + config.normal_weight * terms["normal"]
            )
            terms["edge_normal"] = edge_normal
            total = total + config.edge_normal_weight * edge_normal
        if config.laplacian_weight > 0:
            coarse = self.num_levels - 1
            terms["laplacian"] = self.laplacian_loss(levels[coarse], gt_levels[coarse], has_vertices)
            total = total + config.laplacian_weight * terms["laplacian"]
        terms["main"] = total
        total = config.main_weight * total
        if self.parameter_loss is not None and "smpl_rotmat" in outputs:
            terms.update(self.parameter_loss(outputs, batch, self))
            total = total + config.smpl_weight * terms["smpl_total"]
        terms["total"] = total
        return terms

    def joints_2d_term(self, projected: torch.Tensor, batch: dict) -> torch.Tensor:
        """L1 of projected (B, K, 2) joints against the batch's 2D joints, visibility-weighted,
        averaged as configured (released: over the whole batch)."""
        gt = batch["joints_2d"].float()
        has_2d = batch["has_joints_2d"].float().reshape(-1)
        visibility = gt[..., 2:] * has_2d[:, None, None]
        if self.config.joints_2d_average == "batch":
            return batch_l1(projected, gt[..., :2], visibility)
        return masked_l1(projected, gt[..., :2], visibility, has_2d)
