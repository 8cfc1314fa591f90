"""SMPL and MANO as a small batched, differentiable linear-blend-skinning layer (PyTorch).

Ground truth of the real datasets is given as body-model parameters; the released code turns them
into meshes with the neutral SMPL model (body) and the right-hand MANO model
(``flat_hand_mean=False``, ``use_pca=False``, outputs in metres). :func:`load_body_model` reads the
user's own model file:

* the original ``.pkl`` (SMPL ``basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`` /
  ``SMPL_NEUTRAL.pkl``, ``MANO_RIGHT.pkl``), whose arrays are pickled *chumpy* objects: read with
  :func:`fastmetro.model_files.read_model_pickle`, chumpy classes mapped to inert stand-ins that are then
  evaluated to numpy (terminal ``Ch`` and the ``chumpy.reordering`` nodes); never plain pickle;
* or an ``.npz`` with the same keys.

Keys used: ``v_template`` (V, 3), ``shapedirs`` (V, 3, B), ``posedirs`` (V, 3, 9 (J-1)),
``J_regressor`` (J, V) dense or scipy sparse, ``weights`` (V, J), ``kintree_table`` (2, J)
(row 0 = parent, root's parent any value < 0 or >= J), optional ``f`` faces, MANO ``hands_mean`` (45,).

Model (SMPL paper): ``v_shaped = T + S beta``; ``J = J_regressor v_shaped``;
``v_posed = v_shaped + P (vec(R_1..R_{J-1}) - vec(I))``; world transforms along the kinematic
chain; vertices = sum_j w_ij G_j(theta, J) (v_posed_i - J_j rest offset).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.io import load_npz_restricted
from fastmetro.model_files import chumpy_to_numpy, model_pickle_classes, read_model_pickle

REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


# ----------------------------------------------------------------------------------- files
def read_model_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """The arrays of a SMPL/MANO ``.pkl`` or ``.npz`` (numpy / scipy sparse), safely."""
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: body model file not found")
    if path.suffix == ".npz":
        raw = load_npz_restricted(path, model_pickle_classes())
    elif path.suffix == ".pkl":
        raw = read_model_pickle(path, "body model")
    else:
        raise FastMetroError(f"{path}: body model must be a .pkl or .npz file")
    arrays = {}
    for key, value in raw.items():
        try:
            value = chumpy_to_numpy(value)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            if key in REQUIRED_KEYS or key in ("hands_mean", "f"):
                raise FastMetroError(f"{path}: cannot evaluate chumpy array '{key}' ({error})") from None
            continue  # an entry we never use (priors, symmetry tables...)
        if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
            value = value.item()
        arrays[str(key)] = value
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise FastMetroError(f"{path}: not a SMPL/MANO model file (missing {missing})")
    return arrays


@dataclass(frozen=True)
class BodyModelOutput:
    """vertices (B, V, 3) and joints (B, J, 3) in metres (model frame, plus ``translation``)."""

    vertices: torch.Tensor
    joints: torch.Tensor


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (radians) -> (..., 3, 3) rotation matrices (Rodrigues), smooth at 0."""
    angle_sq = (axis_angle * axis_angle).sum(-1, keepdim=True)
    angle = torch.sqrt(angle_sq + 1e-16)
    # sin(a)/a and (1-cos(a))/a^2 with a Taylor branch near 0 keep gradients finite
    small = angle_sq < 1e-8
    sin_over = torch.where(small, 1 - angle_sq / 6, torch.sin(angle) / angle)
    cos_over = torch.where(small, 0.5 - angle_sq / 24, (1 - torch.cos(angle)) / (angle * angle))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin_over[..., None] * skew + cos_over[..., None] * (skew @ skew)


class BodyModel(nn.Module):
    """Linear blend skinning (SMPL/MANO family). All arrays become buffers (move with ``.to``).

    ``forward(pose, betas, translation=None)``:
        pose: (B, 3 J) axis-angle radians, or (B, J, 3, 3) rotation matrices; joint 0 = global.
        betas: (B, B') with B' <= the model's shape components (missing ones are 0).
        translation: optional (B, 3) metres.
    Returns :class:`BodyModelOutput` (vertices (B, V, 3), joints (B, J, 3), metres).
    ``pose_mean`` (J*3,) is added to axis-angle poses (MANO ``flat_hand_mean=False``).
    """

    v_template: torch.Tensor
    shapedirs: torch.Tensor
    posedirs: torch.Tensor
    J_regressor: torch.Tensor
    weights: torch.Tensor
    pose_mean: torch.Tensor

    def __init__(self, arrays: dict[str, Any], name: str = "body", pose_mean: np.ndarray | None = None):
        super().__init__()
        self.name = name
        template = np.asarray(arrays["v_template"], dtype=np.float64)
        num_vertices = template.shape[0]
        shapedirs = np.asarray(arrays["shapedirs"], dtype=np.float64).reshape(num_vertices, 3, -1)
        kintree = np.asarray(arrays["kintree_table"]).astype(np.int64)
        num_joints = kintree.shape[1]
        posedirs = np.asarray(arrays["posedirs"], dtype=np.float64).reshape(num_vertices, 3, -1)
        regressor = arrays["J_regressor"]
        if sp.issparse(regressor):
            regressor = regressor.toarray()  # type: ignore[attr-defined]  # scipy-stubs: issparse narrows to SparseABC
        else:
            regressor = np.asarray(regressor, dtype=np.float64)
        weights = np.asarray(arrays["weights"], dtype=np.float64)
        problems = []
        if template.shape != (num_vertices, 3):
            problems.append(f"v_template {template.shape}")
        if posedirs.shape[2] != 9 * (num_joints - 1):
            problems.append(f"posedirs has {posedirs.shape[2]} columns, expected {9 * (num_joints - 1)}")
        if regressor.shape != (num_joints, num_vertices):
            problems.append(f"J_regressor {regressor.shape}, expected {(num_joints, num_vertices)}")
        if weights.shape != (num_vertices, num_joints):
            problems.append(f"weights {weights.shape}, expected {(num_vertices, num_joints)}")
        if problems:
            raise FastMetroError(f"{name}: inconsistent body model arrays: " + "; ".join(problems))
        parents = kintree[0].copy()
        parents[(parents < 0) | (parents >= num_joints)] = -1
        parents[0] = -1
        for joint in range(1, num_joints):
            if not 0 <= parents[joint] < joint:
                raise FastMetroError(f"{name}: kintree_table must list parents before children (joint {joint})")
        self.parents = tuple(int(p) for p in parents)
        as_buffer = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("v_template", as_buffer(template))
        self.register_buffer("shapedirs", as_buffer(shapedirs))
        self.register_buffer("posedirs", as_buffer(posedirs.reshape(num_vertices * 3, -1).T))  # (P, 3V)
        self.register_buffer("J_regressor", as_buffer(regressor))
        self.register_buffer("weights", as_buffer(weights))
        mean = np.zeros(3 * num_joints) if pose_mean is None else np.asarray(pose_mean, dtype=np.float64)
        if mean.shape != (3 * num_joints,):
            raise FastMetroError(f"{name}: pose mean has shape {mean.shape}, expected ({3 * num_joints},)")
        self.register_buffer("pose_mean", as_buffer(mean))
        faces = arrays.get("f")
        self.faces = None if faces is None else np.asarray(faces, dtype=np.int64).reshape(-1, 3)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def num_pose_parameters(self) -> int:
        return 3 * self.num_joints

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[2]

    def shaped(self, betas: torch.Tensor) -> torch.Tensor:
        """(B, B') -> (B, V, 3) template + shape blend."""
        count = betas.shape[1]
        if count > self.num_betas:
            raise ValueError(f"{count} betas for a model with {self.num_betas} shape components")
        return self.v_template + torch.einsum("vck,bk->bvc", self.shapedirs[:, :, :count], betas)

    def articulate(
        self, rotations: torch.Tensor, betas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything before skinning, from (B, J, 3, 3) local rotations and (B, B') betas:
        rest joints (B, J, 3), world rotations (B, J, 3, 3) and positions (B, J, 3) along the
        chain (parents precede children), and the rest mesh with the shape and pose blends
        (B, V, 3)."""
        batch = rotations.shape[0]
        shaped = self.shaped(betas)
        rest_joints = torch.einsum("jv,bvc->bjc", self.J_regressor.to(shaped.dtype), shaped)
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        pose_feature = (rotations[:, 1:] - eye).reshape(batch, -1)
        posed = shaped + (pose_feature @ self.posedirs.to(pose_feature.dtype)).reshape(batch, self.num_vertices, 3)
        world_rot = [rotations[:, 0]]
        world_pos = [rest_joints[:, 0]]
        for joint in range(1, self.num_joints):
            parent = self.parents[joint]
            offset = rest_joints[:, joint] - rest_joints[:, parent]
            world_rot.append(world_rot[parent] @ rotations[:, joint])
            world_pos.append(world_pos[parent] + (world_rot[parent] @ offset[..., None])[..., 0])
        return rest_joints, torch.stack(world_rot, 1), torch.stack(world_pos, 1), posed

    def forward(
        self, pose: torch.Tensor, betas: torch.Tensor, translation: torch.Tensor | None = None
    ) -> BodyModelOutput:
        batch = pose.shape[0]
        dtype = self.v_template.dtype
        pose, betas = pose.to(dtype), betas.to(dtype)
        if pose.dim() == 4:
            rotations = pose
        else:
            if pose.shape[1] != self.num_pose_parameters:
                raise ValueError(f"pose has {pose.shape[1]} values, this model needs {self.num_pose_parameters}")
            rotations = axis_angle_to_matrix((pose + self.pose_mean).reshape(batch, self.num_joints, 3))
        rest_joints, rot, posed_joints, posed = self.articulate(rotations, betas)
        # skinning transform maps a rest-pose point: x -> R_j x + (p_j - R_j J_j)
        shift = posed_joints - (rot @ rest_joints[..., None])[..., 0]
        blended_rot = torch.einsum("vj,bjkl->bvkl", self.weights, rot)
        blended_shift = torch.einsum("vj,bjk->bvk", self.weights, shift)
        vertices = (blended_rot @ posed[..., None])[..., 0] + blended_shift
        if translation is not None:
            translation = translation.to(dtype)[:, None]
            vertices = vertices + translation
            posed_joints = posed_joints + translation
        return BodyModelOutput(vertices=vertices, joints=posed_joints)


def load_body_model(path: str | os.PathLike, flat_hand_mean: bool = False) -> BodyModel:
    """A SMPL (24 joints) or MANO (16 joints) layer from the user's ``.pkl``/``.npz``.

    MANO: ``flat_hand_mean=False`` (released setting) adds the file's ``hands_mean`` to the 45
    finger pose values, so a zero pose is the mean (slightly curled) hand; ``use_pca=False``:
    the pose is the full 48 axis-angle values.
    """
    arrays = read_model_arrays(path)
    num_joints = np.asarray(arrays["kintree_table"]).shape[1]
    pose_mean = None
    name = {24: "smpl", 16: "mano"}.get(num_joints, Path(path).stem)
    if "hands_mean" in arrays and not flat_hand_mean:
        hands_mean = np.asarray(arrays["hands_mean"], dtype=np.float64).reshape(-1)
        if hands_mean.size != 3 * (num_joints - 1):
            raise FastMetroError(f"{path}: hands_mean has {hands_mean.size} values, expected {3 * (num_joints - 1)}")
        pose_mean = np.concatenate([np.zeros(3), hands_mean])
    return BodyModel(arrays, name=name, pose_mean=pose_mean)


__all__ = [
    "BodyModel",
    "BodyModelOutput",
    "axis_angle_to_matrix",
    "load_body_model",
    "read_model_arrays",
]
