"""SMPL/MANO parameters fitted to a predicted mesh, and the fitted body as a rigged :class:`Motion`.

FastMETRO predicts the vertices of a mesh with the body model's topology (SMPL: 6890 vertices,
MANO: 778) but no parameters. :func:`fit_smpl` finds pose, shape and translation whose
:class:`~fastmetro.data.body_models.BodyModel` mesh lies on the prediction, for a whole batch of
people at once:

1. start: the SMPL parameter regressor's output where given (``person.smpl_rotmat`` /
   ``person.smpl_betas``), else the model's mean pose (zero pose parameters; for MANO with
   ``flat_hand_mean=False`` that is the curled mean hand, since ``BodyModel`` adds ``pose_mean``)
   and mean shape;
2. rigid alignment: the start mesh is carried onto the target by a least-squares rotation
   (Kabsch) and translation (centroids), folded into the global rotation and the translation,
   so a start in another frame (or none) costs nothing;
3. refinement: batched Levenberg-Marquardt on the mean vertex distance (L2 per vertex, IRLS
   Gauss-Newton matrices from a closed-form LBS Jacobian, gradients from autograd), plus a light
   prior (betas L2, pose L2 on every joint but the global one, towards the mean pose).

Why not L-BFGS or Adam: the kinematic chain makes the problem ill-conditioned (Gauss-Newton
condition number ~5e4 on SMPL: a hand's rotation moves a few hundred vertices by centimetres, the
root all of them by decimetres). Measured on a synthetic SMPL-like model (SMPL's template and
tree, 8 people of pose std 0.3 rad, betas std 1; this 2-core CPU, ``torch.set_num_threads(2)``):

======================  =====================  =====================  ===================
method                  mean-pose start        noisy start (0.1 rad)  time per person
======================  =====================  =====================  ===================
Levenberg-Marquardt     0.0003 mm, 8-10 it.    0.0003 mm, 7 it.       0.09 s (1.2 loaded)
L-BFGS, 300 iterations  6.7 mm (max 12.8)      1.9 mm (max 2.6)       1-10 s
Adam, 300 iterations    11.4 mm (max 16.8)     1.4 mm (max 2.9)       0.6-3 s
======================  =====================  =====================  ===================

("loaded": another job sharing the two cores; the times of the first-order methods are from such
runs, their errors do not depend on it.)

On a noisy target (5 mm per axis, plus 2 % of the vertices 10 cm off) the fit lands 0.6 mm from
the clean mesh; with the squared distance (``squared=True``) the outliers pull it 3.6 mm away.
Farther from the mean pose it takes longer, but (here) ends in the same place: 16 people each of
pose std 0.5, 0.7 and 1.0 rad were all recovered to < 0.001 mm, in 17 to 90 iterations
(``steps`` is a cap: settled people stop, and the batch stops when all have). Real bodies may
still find local minima the synthetic ones did not: give the regressor's rotations as the start
where the checkpoint has them.

:func:`smpl_motion` turns fitted rows into a :class:`~fastmetro.rig.motion.Motion` for the rigged
exporters. The rig has **no pose-corrective blend shapes** (SMPL's ``posedirs``): glTF/FBX skinning
is plain linear blend skinning, so ``skin(motion)`` differs from ``BodyModel``'s mesh by exactly
those correctives carried by the blended bone rotations; with ``posedirs`` zero the two agree to
float rounding (tested: < 1e-5 m). How large the gap is depends on the model file: on the test's
synthetic model (random, per-vertex correctives, far rougher than SMPL's smooth ones) it is
16.8 mm mean / 58 mm max over random poses of std 0.3 rad; measure it on the real SMPL file with
``np.linalg.norm(skin(motion) - fit.vertices[row], axis=1)`` (not measured here: no licensed file).

Conventions: axis-angle in radians, lengths in metres, vertices (B, V, 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fastmetro.data.body_models import BodyModel, axis_angle_to_matrix
from fastmetro.errors import FastMetroError
from fastmetro.rig.motion import Motion, Rig

SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)  # fmt: skip
MANO_JOINT_NAMES = ("wrist",) + tuple(
    f"{finger}{k}" for finger in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)
)  # MANO's kinematic order: index, middle, pinky, ring, thumb (three joints each, knuckle first)

# The distance is smoothed below this (metres): it bounds the IRLS weights 1 / distance and makes
# the minimum differentiable; 0.1 mm is far under the accuracy asked for.
DISTANCE_SMOOTHING_M = 1e-4
# Vertices the Gauss-Newton matrices are built from (every k-th one; gradients use all): the
# matrix only shapes the steps, and a quarter of SMPL's mesh shapes them as well as all of it.
HESSIAN_VERTICES = 1500


@dataclass
class SmplFit:
    """Fitted body-model parameters for B people (numpy, float64).

    pose: (B, J, 3) axis-angle radians, the *parameter* ``BodyModel.forward`` takes (it adds the
    model's ``pose_mean``, MANO's hands mean; reshape to (B, 3 J) to call it); betas: (B, nb);
    translation: (B, 3) metres; vertices: (B, V, 3) the fitted mesh, metres; error_mm: (B,) mean
    vertex distance of ``vertices`` to the target, millimetres; steps: optimiser iterations run.
    """

    pose: np.ndarray
    betas: np.ndarray
    translation: np.ndarray
    vertices: np.ndarray
    error_mm: np.ndarray
    steps: int


# ----------------------------------------------------------------------------------- helpers
def _as_tensor(name: str, value, shape: tuple[int | None, ...], device: torch.device) -> torch.Tensor:
    """``value`` (numpy or torch) as float32 on ``device``, checked against ``shape`` (None: any)."""
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    tensor = tensor.detach().to(device=device, dtype=torch.float32)
    if tensor.dim() != len(shape) or any(want is not None and got != want for got, want in zip(tensor.shape, shape)):
        wanted = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise FastMetroError(f"fit_smpl: {name} has shape {tuple(tensor.shape)}, expected {wanted}")
    if not torch.isfinite(tensor).all():
        raise FastMetroError(f"fit_smpl: {name} has NaN or infinite values")
    return tensor


def matrix_to_axis_angle(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle radians (angle in [0, pi]); not differentiable."""
    from scipy.spatial.transform import Rotation

    flat = rotations.detach().cpu().double().reshape(-1, 3, 3).numpy()
    rotvec = Rotation.from_matrix(flat).as_rotvec()  # projects slightly non-orthogonal input too
    return torch.as_tensor(rotvec, dtype=rotations.dtype, device=rotations.device).reshape(*rotations.shape[:-2], 3)


def kabsch(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares rigid fit, batched: (B, V, 3) each -> rotation (B, 3, 3), shift (B, 3).

    ``target ~= source @ R^T + t`` (no scale, no reflection); computed in float64.
    """
    source, target = source.double(), target.double()
    source_mean, target_mean = source.mean(1), target.mean(1)
    covariance = (source - source_mean[:, None]).transpose(1, 2) @ (target - target_mean[:, None])
    u, _, vt = torch.linalg.svd(covariance)
    # a reflection (det -1) is no rigid motion: flip the least significant axis instead
    sign = torch.sign(torch.linalg.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1))
    rotation = vt.transpose(1, 2) @ fix @ u.transpose(1, 2)
    shift = target_mean - (rotation @ source_mean[..., None])[..., 0]
    return rotation, shift


def _pose_mean(body_model: BodyModel) -> torch.Tensor:
    return body_model.pose_mean.reshape(body_model.num_joints, 3)


def initial_parameters(
    body_model: BodyModel,
    target: torch.Tensor,
    init_rotmat: torch.Tensor | None,
    init_betas: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start pose (B, J, 3) parameters and translation (B, 3): the given rotations or the mean
    pose, rigidly aligned onto ``target`` (Kabsch on all vertices).

    The alignment is about the origin, ``x -> R x + t``; ``BodyModel`` rotates about the root
    joint J0, so the root rotation becomes ``R R0`` and the translation ``R J0 + t - J0``.
    """
    batch, joints = target.shape[0], body_model.num_joints
    mean = _pose_mean(body_model)
    if init_rotmat is None:
        pose = torch.zeros(batch, joints, 3, device=target.device)
    else:  # forward() adds pose_mean to axis-angle poses: take it off so the rotations are exact
        pose = matrix_to_axis_angle(init_rotmat) - mean
    with torch.no_grad():
        start = body_model(pose.reshape(batch, -1), init_betas)
    rotation, shift = kabsch(start.vertices, target)
    root = axis_angle_to_matrix(pose[:, 0] + mean[0]).double()
    pose[:, 0] = matrix_to_axis_angle((rotation @ root).float()) - mean[0]
    root_joint = start.joints[:, 0].double()
    translation = (rotation @ root_joint[..., None])[..., 0] + shift - root_joint
    return pose, translation.float()


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
    """The kinematic chain of ``body_model`` at local ``rotations`` (B, J, 3, 3) and ``betas`` (B, nb),
    step for step as ``BodyModel.forward`` (so its vertices are ``sum_j w_vj (R_j (posed_v - J_j) + p_j)``)."""
    batch = rotations.shape[0]
    shaped = body_model.shaped(betas)
    rest_joints = torch.einsum("jv,bvc->bjc", body_model.J_regressor.to(shaped.dtype), shaped)
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    pose_feature = (rotations[:, 1:] - eye).reshape(batch, -1)
    posedirs = body_model.posedirs.to(pose_feature.dtype)
    posed = shaped + (pose_feature @ posedirs).reshape(batch, body_model.num_vertices, 3)
    world_rot = [rotations[:, 0]]
    world_pos = [rest_joints[:, 0]]
    for joint in range(1, body_model.num_joints):
        parent = body_model.parents[joint]
        offset = rest_joints[:, joint] - rest_joints[:, parent]
        world_rot.append(world_rot[parent] @ rotations[:, joint])
        world_pos.append(world_pos[parent] + (world_rot[parent] @ offset[..., None])[..., 0])
    return Chain(rest_joints, torch.stack(world_rot, 1), torch.stack(world_pos, 1), posed)


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
    full = pose + _pose_mean(body_model)
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


def _first_order(objective: Objective, x: torch.Tensor, steps: int, method: str) -> tuple[torch.Tensor, int]:
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


def _start_betas(
    body_model: BodyModel, init_betas, num_betas: int | None, batch: int, device: torch.device
) -> torch.Tensor:
    """(B, nb) starting betas: ``init_betas`` cut or zero-padded to ``num_betas`` (default: its
    own count, else min(10, the model's components)), zeros without it."""
    if num_betas is None:
        num_betas = min(10, body_model.num_betas) if init_betas is None else int(np.shape(init_betas)[-1])
    if not 0 <= num_betas <= body_model.num_betas:
        raise FastMetroError(f"fit_smpl: {num_betas} betas for a model with {body_model.num_betas} shape components")
    betas = torch.zeros(batch, num_betas, device=device)
    if init_betas is not None:
        given = _as_tensor("init_betas", init_betas, (batch, None), device)[:, :num_betas]
        betas[:, : given.shape[1]] = given
    return betas


def fit_smpl(
    body_model: BodyModel,
    target_vertices: np.ndarray | torch.Tensor,
    init_rotmat: np.ndarray | torch.Tensor | None = None,
    init_betas: np.ndarray | torch.Tensor | None = None,
    steps: int = 100,
    betas_weight: float = 1e-3,
    pose_weight: float = 1e-3,
    num_betas: int | None = None,
    method: Literal["lm", "lbfgs", "adam"] = "lm",
    squared: bool = False,
) -> SmplFit:
    """Body-model parameters whose mesh lies on ``target_vertices``, for a batch of people.

    target_vertices: (B, V, 3) metres, V = the model's vertex count, in any frame (camera
    coordinates, root-relative: the start's rigid alignment takes care of it; the fitted global
    rotation and translation are in that frame); numpy or torch on any device (the fit runs on
    the body model's device, float32). init_rotmat: (B, J, 3, 3) local rotations
    (the SMPL regressor's ``smpl_rotmat``), else the mean pose; init_betas: (B, nb), else zeros.
    The start is rigidly aligned onto the target first (:func:`initial_parameters`).
    steps: most iterations (``lm``: each one model evaluation with gradient and one Jacobian;
    people that have converged stop early); betas_weight / pose_weight: prior weights, millimetres
    of mean vertex distance per unit² of betas / per rad² of non-global pose parameters (the
    defaults weigh betas of norm 3 like 0.01 mm); num_betas: shape components fitted (default:
    init_betas' count, else min(10, the model's)); method: ``lm`` (batched Levenberg-Marquardt,
    the default: fastest by far, see the module notes), ``lbfgs`` or ``adam``; squared: minimise
    the mean squared distance instead of the mean distance (less robust to outlying vertices).
    Deterministic: no randomness, the same input gives the same result on one machine.
    """
    if method not in ("lm", "lbfgs", "adam"):
        raise FastMetroError(f"fit_smpl: unknown method {method!r} (lm, lbfgs or adam)")
    device = body_model.v_template.device
    target = _as_tensor("target_vertices", target_vertices, (None, body_model.num_vertices, 3), device)
    batch, joints = target.shape[0], body_model.num_joints
    if batch == 0:
        raise FastMetroError("fit_smpl: no people to fit (target_vertices is empty)")
    rotmat = None if init_rotmat is None else _as_tensor("init_rotmat", init_rotmat, (batch, joints, 3, 3), device)
    betas = _start_betas(body_model, init_betas, num_betas, batch, device)
    count = betas.shape[1]
    pose, translation = initial_parameters(body_model, target, rotmat, betas)
    objective = Objective(body_model, target, count, betas_weight, pose_weight, squared)
    start = torch.cat([pose.reshape(batch, -1), betas, translation], 1)
    if method == "lm":
        x, done = levenberg_marquardt(objective, start, steps)
    else:
        x, done = _first_order(objective, start, steps, method)
    pose, betas, translation = objective.split(x)
    with torch.no_grad():
        vertices = body_model(pose.reshape(batch, -1), betas, translation).vertices
        error = torch.linalg.norm(vertices - target, dim=-1).mean(1)
    as_numpy = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    return SmplFit(
        as_numpy(pose), as_numpy(betas), as_numpy(translation), as_numpy(vertices), as_numpy(error) * 1000.0, done
    )


# ----------------------------------------------------------------------------------- rig
def bone_names(body_model: BodyModel) -> tuple[str, ...]:
    """SMPL's 24 or MANO's 16 joint names (kinematic order), else ``joint_00``, ``joint_01``..."""
    names = {24: SMPL_JOINT_NAMES, 16: MANO_JOINT_NAMES}.get(body_model.num_joints)
    return names if names is not None else tuple(f"joint_{j:02d}" for j in range(body_model.num_joints))


def _top_influences(weights: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(V, K) bone indices and weights of each vertex's K largest skinning weights, renormalised."""
    count = min(count, weights.shape[1])
    indices = np.argsort(-weights, axis=1, kind="stable")[:, :count]
    kept = np.take_along_axis(weights, indices, 1)
    total = kept.sum(1, keepdims=True)
    if not (total > 0).all():
        raise FastMetroError("smpl_motion: the body model has vertices without skinning weights")
    return indices.astype(np.int64), kept / total


def _rigid(rotation: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(..., 3, 3) and (..., 3) -> (..., 4, 4) rigid transforms."""
    out = np.zeros((*rotation.shape[:-2], 4, 4))
    out[..., :3, :3], out[..., :3, 3], out[..., 3, 3] = rotation, position, 1.0
    return out


def smpl_motion(
    body_model: BodyModel,
    fit: SmplFit,
    rows: Sequence[int] | None = None,
    placement: np.ndarray | None = None,
    fps: float = 30.0,
    name: str = "person_00",
    max_influences: int = 4,
) -> Motion:
    """A :class:`Motion` of the fitted rows ``rows`` of ``fit`` (default: all), one frame per row.

    The rig is the body model at the rows' mean betas (a video's frames share one body): bones
    named by :func:`bone_names`, bind frames with identity rotation at the shaped rest joints,
    bind vertices = the shaped template (betas applied, no pose), skin = the model's weights, the
    ``max_influences`` largest per vertex, renormalised (SMPL has at most 4). Bone poses are the
    world rotations and posed joints of ``BodyModel.forward`` (:func:`chain`); each frame's
    fitted translation goes into the placement: ``placement[t] @ translate(translation[row])``
    (placement (T, 4, 4), default identity, e.g. the rig -> camera transform).

    Not in the rig: SMPL's pose-corrective blend shapes (``posedirs``), which linear blend
    skinning (glTF, FBX) cannot express. So ``skin(motion, t)`` is ``fit.vertices[row]`` minus the
    correctives (and, for frames whose betas differ from the mean, the shape difference); with
    ``posedirs`` zero and equal betas the two agree to float rounding.
    """
    rows = list(range(len(fit.pose))) if rows is None else [int(row) for row in rows]
    if not rows or not all(0 <= row < len(fit.pose) for row in rows):
        raise FastMetroError(f"smpl_motion: rows {rows} must be a non-empty list of rows of a {len(fit.pose)}-row fit")
    frames = len(rows)
    if placement is None:
        placement = np.broadcast_to(np.eye(4), (frames, 4, 4))
    placement = np.asarray(placement, dtype=np.float64)
    if placement.shape != (frames, 4, 4):
        raise FastMetroError(f"smpl_motion: placement {placement.shape}, expected ({frames}, 4, 4)")
    device = body_model.v_template.device
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    betas = as_tensor(fit.betas[rows].mean(0, keepdims=True))
    with torch.no_grad():
        rotations = axis_angle_to_matrix(as_tensor(fit.pose[rows]) + _pose_mean(body_model))
        state = chain(body_model, rotations, betas.expand(frames, -1))
        shaped = body_model.shaped(betas)[0]
    to_numpy = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    rest = to_numpy(state.rest_joints[0])
    indices, weights = _top_influences(to_numpy(body_model.weights), max_influences)
    faces = body_model.faces if body_model.faces is not None else np.zeros((0, 3), np.int64)
    rig = Rig(
        bone_names=bone_names(body_model),
        parents=np.asarray(body_model.parents, dtype=np.int64),
        bind_poses=_rigid(np.broadcast_to(np.eye(3), (len(rest), 3, 3)), rest),
        vertices=to_numpy(shaped),
        faces=np.asarray(faces, dtype=np.int64),
        skin_indices=indices,
        skin_weights=weights,
    )
    translate = _rigid(np.broadcast_to(np.eye(3), (frames, 3, 3)), fit.translation[rows])
    bone_poses = _rigid(to_numpy(state.world_rot), to_numpy(state.joints))
    return Motion(rig=rig, bone_poses=bone_poses, placement=placement @ translate, fps=fps, name=name)


__all__ = [
    "MANO_JOINT_NAMES",
    "SMPL_JOINT_NAMES",
    "Chain",
    "Objective",
    "SmplFit",
    "bone_names",
    "chain",
    "fit_smpl",
    "initial_parameters",
    "kabsch",
    "levenberg_marquardt",
    "matrix_to_axis_angle",
    "right_jacobian",
    "smpl_motion",
    "vertex_jacobian",
]
