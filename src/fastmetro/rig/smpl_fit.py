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
from fastmetro.rig.smpl_solver import (  # re-exported
    Chain,
    Objective,
    chain,
    first_order,
    levenberg_marquardt,
    pose_mean,
    right_jacobian,
    vertex_jacobian,
)

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
    mean = pose_mean(body_model)
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
        x, done = first_order(objective, start, steps, method)
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
        rotations = axis_angle_to_matrix(as_tensor(fit.pose[rows]) + pose_mean(body_model))
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
