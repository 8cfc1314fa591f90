"""The SMPL/MANO fitter's solver: the kinematic chain, a closed-form LBS Jacobian, the objective
and batched Levenberg-Marquardt (first-order methods kept for comparison).

Used by :func:`fastmetro.rig.smpl_fit.fit_smpl`; the module notes there explain the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastmetro.data.body_models import BodyModel, axis_angle_to_matrix

# the minimum differentiable; 0.1 mm is far under the accuracy asked for.
DISTANCE_SMOOTHING_M = 1e-4
# Vertices the Gauss-Newton matrices are built from (every k-th one; gradients use all): the
# matrix only shapes the steps, and a quarter of SMPL's mesh shapes them as well as all of it.
HESSIAN_VERTICES = 1500


def pose_mean(body_model: BodyModel) -> torch.Tensor:
    return body_model.pose_mean.reshape(body_model.num_joints, 3)


@dataclass(frozen=True)
class Chain:
    """What ``BodyModel.forward`` computes before blending, for B people (model frame, metres).

    rest_joints (B, J, 3): joints of the shaped template; world_rot (B, J, 3, 3): rotations along
    the chain; joints (B, J, 3): posed joints (no translation); posed (B, V, 3): shaped template
    plus pose correctives (``posedirs``), in the rest pose.
    """

    rest_joints: torch.Tensor
    world_rot: torch.Tensor
    joints: torch.Tensor
    posed: torch.Tensor


def chain(body_model: BodyModel, rotations: torch.Tensor, betas: torch.Tensor) -> Chain:
    """The kinematic chain of ``body_model`` at local ``rotations`` (B, J, 3, 3) and ``betas`` (B, nb):
    :meth:`BodyModel.articulate`, what ``BodyModel.forward`` skins (its vertices are
    ``sum_j w_vj (R_j (posed_v - J_j) + p_j)``)."""
    return Chain(*body_model.articulate(rotations, betas))


def _skew(vectors: torch.Tensor) -> torch.Tensor:
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*vectors.shape, 3)


def right_jacobian(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) right Jacobian of SO(3): ``exp(a + d) ~= exp(a) exp(J_r(a) d)``."""
    angle_sq = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]
    angle = torch.sqrt(angle_sq + 1e-16)
    small = angle_sq < 1e-8  # Taylor branch: (1 - cos a) / a^2 -> 1/2, (a - sin a) / a^3 -> 1/6
    first = torch.where(small, 0.5 - angle_sq / 24, (1 - torch.cos(angle)) / (angle * angle))
    second = torch.where(small, 1.0 / 6 - angle_sq / 120, (angle - torch.sin(angle)) / (angle * angle * angle))
    skew = _skew(rotvec)
    return torch.eye(3, dtype=rotvec.dtype, device=rotvec.device) - first * skew + second * (skew @ skew)


def _subtree_matrix(parents: Sequence[int]) -> torch.Tensor:
    """(J, J) with [j, k] = 1 where bone j is k or one of k's descendants."""
    count = len(parents)
    inside = torch.eye(count)
    for joint in range(1, count):  # parents precede children: the parent's row is complete
        inside[joint] += inside[parents[joint]]
    return inside


def _corrective_jacobian(
    body_model: BodyModel, local: torch.Tensor, rotvec: torch.Tensor, vertices: torch.Tensor
) -> torch.Tensor:
    """(B, V', 3, 3 (J-1)) derivative of the pose correctives (rest frame) of ``vertices`` by the
    non-root pose parameters: the features are ``R_k - I``, ``d exp(a) / da_i = exp(a) [J_r(a) e_i]_x``."""
    batch, bones = local.shape[:2]
    columns = right_jacobian(rotvec).transpose(-1, -2)  # (B, J-1, 3 params, 3)
    feature = (local[:, :, None] @ _skew(columns)).reshape(batch, bones, 3, 9)
    directions = body_model.posedirs.reshape(bones, 9, body_model.num_vertices, 3)[:, :, vertices]
    moved = torch.einsum("bkpm,kmvc->bvckp", feature, directions)
    return moved.reshape(batch, len(vertices), 3, 3 * bones)


def _shape_jacobian(body_model: BodyModel, state: Chain, count: int, vertices: torch.Tensor) -> torch.Tensor:
    """(B, V', 3, count) derivative by the betas: they move the template (carried by the blended
    rotation) and the rest joints (whose offsets the chain rotates)."""
    rot, weights = state.world_rot, body_model.weights[vertices]
    directions = body_model.shapedirs[:, :, :count]
    joint_dirs = torch.einsum("jv,vcn->jcn", body_model.J_regressor, directions)  # (J, 3, nb)
    joint_moves = [joint_dirs[0].expand(len(rot), -1, -1)]
    for joint in range(1, body_model.num_joints):
        parent = body_model.parents[joint]
        joint_moves.append(joint_moves[parent] + rot[:, parent] @ (joint_dirs[joint] - joint_dirs[parent]))
    moves = torch.stack(joint_moves, 1) - rot @ joint_dirs  # (B, J, 3, nb)
    blended = torch.einsum("vj,bjkl->bvkl", weights, rot)
    return blended @ directions[vertices] + torch.einsum("vj,bjcn->bvcn", weights, moves)


def vertex_jacobian(
    body_model: BodyModel, pose: torch.Tensor, betas: torch.Tensor, vertices: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, V', 3, 3 J + nb + 3) derivative of the vertices (metres; all, or the indices
    ``vertices`` (V',)) by the pose parameters (B, J, 3) (rad), betas (B, nb) and translation
    (metres), in closed form: equal to autograd's, at a fraction of its cost.

    A local rotation change ``dtheta_k`` turns bone k and its descendants about the posed joint
    ``p_k`` with world angular velocity ``w = G_k J_r dtheta_k``: a vertex moves by
    ``w x sum_{j in subtree(k)} w_vj (x_vj - p_k)``, x_vj being the vertex as carried by bone j;
    ``dtheta_k`` also changes the pose correctives, which the blended rotation carries along.
    """
    if vertices is None:
        vertices = torch.arange(body_model.num_vertices, device=pose.device)
    full = pose + pose_mean(body_model)
    local = axis_angle_to_matrix(full)
    state = chain(body_model, local, betas)
    rot, joints, weights = state.world_rot, state.joints, body_model.weights[vertices]
    shift = joints - (rot @ state.rest_joints[..., None])[..., 0]
    carried = torch.einsum("bjkl,bvl->bvjk", rot, state.posed[:, vertices]) + shift[:, None]  # (B, V', J, 3)
    subtree = _subtree_matrix(body_model.parents).to(weights)
    lever = torch.einsum("vj,bvjc,jk->bvkc", weights, carried, subtree)
    lever = lever - (weights @ subtree)[None, :, :, None] * joints[:, None]  # (B, V', J, 3)
    axes = (rot @ right_jacobian(full)).transpose(-1, -2)  # (B, J, 3 params, 3): world axis per param
    by_pose = torch.linalg.cross(axes[:, None], lever[:, :, :, None])  # (B, V', J, 3 params, 3)
    batch, count = betas.shape
    by_pose = by_pose.permute(0, 1, 4, 2, 3).reshape(batch, len(vertices), 3, -1)
    blended = torch.einsum("vj,bjkl->bvkl", weights, rot)
    by_pose[..., 3:] += blended @ _corrective_jacobian(body_model, local[:, 1:], full[:, 1:], vertices)
    by_shape = _shape_jacobian(body_model, state, count, vertices)
    by_translation = torch.eye(3).to(weights).expand(batch, len(vertices), 3, 3)
    return torch.cat([by_pose, by_shape, by_translation], -1)


# ----------------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class Objective:
    """What is minimised, per person: the mean vertex distance to the target in millimetres,
    ``mean_v sqrt(|r_v|^2 + s^2) - s`` (``s`` = :data:`DISTANCE_SMOOTHING_M`; ``squared``: the mean
    squared distance, mm², instead), plus ``betas_weight |betas|^2 + pose_weight |pose[1:]|^2``.

    Parameters travel as one (B, P) row per person: pose (3 J, axis-angle parameters), betas (nb),
    translation (3, metres).
    """

    body_model: BodyModel
    target: torch.Tensor
    num_betas: int
    betas_weight: float
    pose_weight: float
    squared: bool = False

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        joints = self.body_model.num_joints
        pose, betas, translation = x.split([3 * joints, self.num_betas, 3], dim=1)
        return pose.reshape(len(x), joints, 3), betas, translation

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) losses and (B, V) squared vertex distances (mm²) at parameters ``x`` (B, P)."""
        pose, betas, translation = self.split(x)
        vertices = self.body_model(pose.reshape(len(x), -1), betas, translation).vertices
        squared = (((vertices - self.target) * 1000.0) ** 2).sum(-1)
        if self.squared:
            data = squared.mean(1)
        else:
            smooth = DISTANCE_SMOOTHING_M * 1000.0
            data = (torch.sqrt(squared + smooth * smooth) - smooth).mean(1)
        prior = self.betas_weight * (betas * betas).sum(1) + self.pose_weight * (pose[:, 1:] ** 2).sum((1, 2))
        return data + prior, squared.detach()

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,) losses, (B, P) gradients (exact, autograd), (B, V) squared distances."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, squared = self(x)
            (grad,) = torch.autograd.grad(loss.sum(), x)  # people are independent: a row per person
        return loss.detach(), grad, squared

    def hessian(self, x: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """(B, P, P) float64 Gauss-Newton matrix at ``x`` (for the distance: IRLS's
        ``J^T diag(1 / sqrt(|r|^2 + s^2)) J``, an upper bound of its curvature: cautious steps)."""
        pose, betas, _ = self.split(x.detach())
        # every k-th vertex (about HESSIAN_VERTICES of them): the matrix only shapes the steps
        stride = max(1, self.body_model.num_vertices // HESSIAN_VERTICES)
        vertices = torch.arange(0, self.body_model.num_vertices, stride, device=x.device)
        squared = squared[:, vertices]
        with torch.no_grad():
            jacobian = vertex_jacobian(self.body_model, pose, betas, vertices) * 1000.0  # mm per unit
        if self.squared:
            per_vertex = torch.full_like(squared, 2.0)
        else:
            smooth = DISTANCE_SMOOTHING_M * 1000.0
            per_vertex = 1.0 / torch.sqrt(squared + smooth * smooth)
        scaled = (jacobian * torch.sqrt(per_vertex / squared.shape[1])[..., None, None]).flatten(1, 2)
        hessian = (scaled.transpose(1, 2) @ scaled).double()
        prior = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        joints = self.body_model.num_joints
        prior[3 : 3 * joints] = 2 * self.pose_weight
        prior[3 * joints : 3 * joints + self.num_betas] = 2 * self.betas_weight
        return hessian + torch.diag(prior)


# ----------------------------------------------------------------------------------- optimisers
def levenberg_marquardt(objective: Objective, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """Batched Levenberg-Marquardt: each person has its own damping and accepts a step only if its
    loss falls, so one batch runs B independent fits. Returns (parameters (B, P), iterations run).

    Gradients come from autograd through ``BodyModel`` (so they are the objective's own); the
    Gauss-Newton matrices from :func:`vertex_jacobian`.
    """
    loss, grad, squared = objective.value_and_grad(x)
    hessian = objective.hessian(x, squared)
    damping = torch.full_like(loss, 1e-3, dtype=torch.float64)
    settled = torch.zeros_like(loss, dtype=torch.bool)
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    iterations = 0
    while iterations < steps and not bool(settled.all()):
        iterations += 1
        # Marquardt's scaling by diag(H): the parameters' units (rad, betas, metres) stop mattering
        system = hessian + damping[:, None, None] * (torch.diag_embed(hessian.diagonal(dim1=1, dim2=2)) + 1e-9 * eye)
        step = -torch.linalg.solve(system, grad.double()[..., None])[..., 0].to(x.dtype)
        new_loss, new_grad, new_squared = objective.value_and_grad(x + step)
        better = (new_loss < loss) & ~settled
        # a person is done once a step changes its loss by less than 0.01 µm of mean distance (or a
        # millionth of the loss, which a noisy target leaves large): accepted, it no longer pays;
        # rejected, the loss is at float32's floor (waiting for the damping to explode would take
        # ~20 more iterations), or once its steps keep failing
        settled |= ((loss - new_loss).abs() < 1e-5 + 1e-6 * loss) | (damping > 1e8)
        x = torch.where(better[:, None], x + step, x)
        loss, grad = torch.where(better, new_loss, loss), torch.where(better[:, None], new_grad, grad)
        squared = torch.where(better[:, None], new_squared, squared)
        damping = torch.where(better, damping / 3, damping * 4).clamp(min=1e-9)
        if bool((better & ~settled).any()):  # Gauss-Newton matrices only where the point moved
            hessian = hessian.clone()
            moved = better & ~settled
            hessian[moved] = objective.hessian(x[moved], squared[moved])
    return x, iterations


def first_order(objective: Objective, x: torch.Tensor, steps: int, method: str) -> tuple[torch.Tensor, int]:
    """L-BFGS (strong-Wolfe line search) or Adam on the summed loss, kept for comparison: on this
    ill-conditioned problem both need hundreds of steps (the module notes' table)."""
    x = x.detach().clone().requires_grad_(True)
    if method == "adam":
        adam = torch.optim.Adam([x], lr=0.01)  # 10 mrad / 1 cm per step: a mean-pose start's scale
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(adam, max(steps, 1))
        for _ in range(steps):
            adam.zero_grad()
            objective(x)[0].sum().backward()
            adam.step()
            schedule.step()
        return x.detach(), steps
    lbfgs = torch.optim.LBFGS(
        [x],
        max_iter=steps,
        history_size=20,
        tolerance_grad=1e-12,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = objective(x)[0].sum()
        loss.backward()
        return loss

    lbfgs.step(closure)
    return x.detach(), int(lbfgs.state[x].get("n_iter", 0))
