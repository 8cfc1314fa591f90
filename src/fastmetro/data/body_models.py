"""SMPL and MANO as a small batched, differentiable linear-blend-skinning layer (PyTorch).

Ground truth of the real datasets is given as body-model parameters; the released code turns them
into meshes with the neutral SMPL model (body) and the right-hand MANO model
(``flat_hand_mean=False``, ``use_pca=False``, outputs in metres). :func:`load_body_model` reads the
user's own model file:

* the original ``.pkl`` (SMPL ``basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`` /
  ``SMPL_NEUTRAL.pkl``, ``MANO_RIGHT.pkl``), whose arrays are pickled *chumpy* objects: read with
  :class:`fastmetro.io.RestrictedUnpickler`, chumpy classes mapped to inert stand-ins that are then
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
from fastmetro.io import PickledObject, RestrictedUnpickler, load_npz_restricted, numpy_scipy_classes

REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


# ----------------------------------------------------------------------------------- chumpy
class _ChumpyNode(PickledObject):
    """Inert stand-in for a pickled chumpy object; :func:`to_numpy` evaluates it."""

    kind = "Ch"


def _chumpy_class(kind: str) -> type:
    return type(f"Chumpy{kind}", (_ChumpyNode,), {"kind": kind})


# chumpy terminal arrays and the reordering nodes that appear in SMPL/MANO files.
_CHUMPY_KINDS = {
    ("chumpy.ch", "Ch"): "Ch",
    ("chumpy.reordering", "Select"): "Select",
    ("chumpy.reordering", "Reshape"): "Reshape",
    ("chumpy.reordering", "transpose"): "transpose",
    ("chumpy.reordering", "Transpose"): "transpose",
    ("chumpy.reordering", "Concatenate"): "Concatenate",
    ("chumpy.reordering", "Permute"): "transpose",
    ("chumpy.reordering", "Ravel"): "Ravel",
    ("chumpy.ch_ops", "add"): "add",
    ("chumpy.ch_ops", "subtract"): "subtract",
    ("chumpy.ch_ops", "multiply"): "multiply",
}


def _safe_reconstructor(cls, base, state=None):
    """``copy_reg._reconstructor`` (pickle protocols 0/1) for stand-ins and scipy sparse only.

    ``cls`` was itself resolved through the allow-list, so it is one of ours.
    """
    import scipy.sparse as sparse

    allowed = isinstance(cls, type) and (issubclass(cls, PickledObject) or issubclass(cls, sparse.spmatrix))
    if not allowed or base is not object:
        raise ValueError(f"refusing to reconstruct {cls!r}")
    return object.__new__(cls)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-0/1 pickles use it for bytes (latin1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise ValueError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def chumpy_classes() -> dict[tuple[str, str], Any]:
    """Allow-list for model pickles: numpy, scipy.sparse and chumpy stand-ins."""
    allowed = numpy_scipy_classes()
    for name, kind in _CHUMPY_KINDS.items():
        allowed[name] = _chumpy_class(kind)
    # Python 2 pickles of new-style objects at protocol 0/1 go through copy_reg._reconstructor.
    for module in ("copy_reg", "copyreg"):
        allowed[(module, "_reconstructor")] = _safe_reconstructor
    for module in ("__builtin__", "builtins"):
        allowed[(module, "object")] = object
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class _ModelUnpickler(RestrictedUnpickler):
    """Allow-list of :func:`chumpy_classes`, plus an inert stand-in for any other chumpy class.

    An unknown chumpy node only fails if an array we need is built from it (see :func:`to_numpy`).
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed and (module == "chumpy" or module.startswith("chumpy.")):
            return _chumpy_class(f"unsupported {module}.{name}")
        return super().find_class(module, name)


def to_numpy(value: Any, depth: int = 0) -> Any:
    """Evaluate chumpy stand-ins (recursively) to numpy arrays; other values pass through."""
    if depth > 64:
        raise ValueError("chumpy graph too deep")
    if not isinstance(value, _ChumpyNode):
        return value
    state = value.__dict__
    get = lambda name: np.asarray(to_numpy(state[name], depth + 1))  # noqa: E731
    kind = value.kind
    if kind == "Ch":
        return np.asarray(to_numpy(state["x"], depth + 1))
    if kind == "Select":
        array = get("a").ravel()[np.asarray(state["idxs"]).ravel()]
        shape = state.get("preferred_shape")
        return array.reshape(shape) if shape is not None else array
    if kind == "Reshape":
        return get("a").reshape(state["newshape"])
    if kind == "transpose":
        return np.transpose(get("a"), state.get("axes"))
    if kind == "Ravel":
        return get("a").ravel()
    if kind == "Concatenate":
        parts = [np.asarray(to_numpy(part, depth + 1)) for part in state["many"]]
        return np.concatenate(parts, axis=state.get("axis", 0))
    if kind in ("add", "subtract", "multiply"):
        a, b = get("a"), get("b")
        return {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}[kind](a, b)
    raise ValueError(f"unsupported chumpy node {kind}")


# ----------------------------------------------------------------------------------- files
def read_model_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """The arrays of a SMPL/MANO ``.pkl`` or ``.npz`` (numpy / scipy sparse), safely."""
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: body model file not found")
    if path.suffix == ".npz":
        raw = load_npz_restricted(path, chumpy_classes())
    elif path.suffix == ".pkl":
        try:
            with open(path, "rb") as handle:
                raw = _ModelUnpickler(handle, chumpy_classes(), source=str(path)).load()
        except FastMetroError:
            raise
        except Exception as error:  # refused global, truncated stream, ...
            raise FastMetroError(f"{path}: cannot read body model pickle ({str(error).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise FastMetroError(f"{path}: expected a pickled dict of arrays, got {type(raw).__name__}")
    else:
        raise FastMetroError(f"{path}: body model must be a .pkl or .npz file")
    arrays = {}
    for key, value in raw.items():
        try:
            value = to_numpy(value)
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
        shaped = self.shaped(betas)
        rest_joints = torch.einsum("jv,bvc->bjc", self.J_regressor, shaped)
        eye = torch.eye(3, dtype=dtype, device=pose.device)
        pose_feature = (rotations[:, 1:] - eye).reshape(batch, -1)
        posed = shaped + (pose_feature @ self.posedirs).reshape(batch, self.num_vertices, 3)

        # world transforms along the chain (parents precede children)
        world_rot = [rotations[:, 0]]
        world_pos = [rest_joints[:, 0]]
        for joint in range(1, self.num_joints):
            parent = self.parents[joint]
            offset = rest_joints[:, joint] - rest_joints[:, parent]
            world_rot.append(world_rot[parent] @ rotations[:, joint])
            world_pos.append(world_pos[parent] + (world_rot[parent] @ offset[..., None])[..., 0])
        rot = torch.stack(world_rot, 1)  # (B, J, 3, 3)
        posed_joints = torch.stack(world_pos, 1)  # (B, J, 3)
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
    "chumpy_classes",
    "load_body_model",
    "read_model_arrays",
    "to_numpy",
]
