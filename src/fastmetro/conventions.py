"""One definition of each convention the data, model, inference, loss and metric code share.

Everything here is plain array maths that works on NumPy arrays and torch tensors alike
(``@``, indexing and ``sum`` behave the same), so training (torch) and inference (NumPy) use
literally the same function.

**Images.** ImageNet normalisation (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`) of RGB in [0, 1].

**Boxes and crops.** The released label ``scale`` is the side of a square box divided by
:data:`SCALE_UNIT` (200 px). A crop maps the square of side ``side`` centred at ``center``
(pixel centres at integer coordinates, OpenCV) onto an S x S image; crop-normalised coordinates
are ``n = 2 (p - center) / side`` (the crop spans [-1, 1]) and crop pixel ``j`` has centre
``n = (2 j + 1) / S - 1``. :func:`crop_matrix` / :func:`warp_crop` are the only implementation,
used by training (with rotation/flip augmentation) and inference alike.

**Root points** (:func:`joint_root`, :func:`mesh_root`): a topology says how a prediction is
centred. Joint sets (from the joint tokens, or ground truth) are centred on the mean of
``topology.root_joints`` (body: the two hips = mid-hip; hand: the wrist). Meshes, and the joints
regressed from a mesh, are centred on ``topology.root_regressor @ fine_vertices`` (SMPL: the H36M
pelvis; Anny: the mean of its hip rows; MANO: the regressed wrist).

**The camera.** FastMETRO's weak-perspective camera ``(s, tx, ty)`` applies to ROOT-CENTRED
points, as in the released training and demo: a point ``X`` of a prediction lands at
``s * (X_c[:2] + (tx, ty))`` in crop-normalised coordinates, where ``X_c`` is ``X`` minus its
root point (the joint root for joint-token joints, the mesh root for meshes and mesh joints).
The raw network output is not centred and its offset is unconstrained by any loss, so never
project raw points. :func:`weak_perspective_project` is that projection;
:func:`perspective_project` is the pinhole projection of camera-space points (a different thing,
named differently on purpose).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: ImageNet normalisation of RGB values in [0, 1] (released preprocessing).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The released models' square input crop (pixels): every default input size in fastmetro.
IMAGE_SIZE = 224
#: The released label convention: ``scale`` = square box side / SCALE_UNIT pixels.
SCALE_UNIT = 200.0
#: Shrinking a crop by at least this factor first area-averages the image (no aliasing).
ANTIALIAS_FACTOR = 2.0


# ----------------------------------------------------------------------------- images
def normalise_image(pixels: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(S, S, 3) RGB uint8 or float in [0, 255] -> (3, S, S) float32 normalised (ImageNet's
    ``mean``/``std`` of [0, 1] values by default)."""
    image: np.ndarray = np.asarray(pixels).astype(np.float32) / 255.0
    image = (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


# ----------------------------------------------------------------------------- boxes and crops
def side_from_scale(scale: float) -> float:
    """Square box side in pixels from the released label ``scale``."""
    return SCALE_UNIT * float(scale)


def scale_from_side(side: float) -> float:
    """The released label ``scale`` of a square box of ``side`` pixels."""
    return float(side) / SCALE_UNIT


def rotation_2d(degrees: float) -> np.ndarray:
    """(2, 2) ``[[cos, sin], [-sin, cos]]``: turns content counter-clockwise on a y-down screen."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[cos, sin], [-sin, cos]])


def normalised_matrix(center: Sequence[float], side: float, rotation: float = 0.0) -> np.ndarray:
    """(2, 3) affine: full-image pixels -> crop-normalised [-1, 1] (rotation in degrees)."""
    linear = rotation_2d(rotation) * (2.0 / float(side))
    return np.concatenate([linear, (-linear @ np.asarray(center, dtype=np.float64))[:, None]], axis=1)


def crop_matrix(
    center: Sequence[float], side: float, size: int, rotation: float = 0.0, flip: bool = False
) -> np.ndarray:
    """(2, 3) affine: full-image pixels -> crop pixels of an ``size`` x ``size`` crop (OpenCV
    pixel centres). ``flip`` mirrors the crop horizontally (after the rotation)."""
    matrix = normalised_matrix(center, side, rotation) * (size / 2.0)
    matrix[:, 2] += size / 2.0 - 0.5  # j = (n + 1) S / 2 - 0.5
    if flip:
        matrix[0] = -matrix[0]
        matrix[0, 2] += size - 1
    return matrix


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` (H, W, C) with the (2, 3) pixel ``matrix`` into a (size, size, C) crop.

    Bilinear, zeros outside the image. When the warp shrinks the image by
    :data:`ANTIALIAS_FACTOR` or more, the image is first reduced by area averaging (by an integer
    factor, with the matrix adjusted exactly), so a large box does not alias.
    """
    import cv2

    matrix = np.asarray(matrix, dtype=np.float64)
    shrink = 1.0 / max(math.sqrt(abs(np.linalg.det(matrix[:, :2]))), 1e-12)
    if shrink >= ANTIALIAS_FACTOR:
        factor = int(shrink)
        height, width = image.shape[:2]
        small_size = (max(1, round(width / factor)), max(1, round(height / factor)))
        small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
        if small.ndim < image.ndim:
            small = small[..., None]
        # Pixel edges scale by the size ratio: u = ratio * (u_small + 0.5) - 0.5.
        ratio = np.array([width / small_size[0], height / small_size[1]])
        matrix = matrix.copy()
        matrix[:, 2] += matrix[:, :2] @ (0.5 * ratio - 0.5)
        matrix[:, :2] = matrix[:, :2] * ratio[None, :]
        image = small
    crop = cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if crop.ndim < np.ndim(image):
        crop = crop[..., None]
    return crop


# ----------------------------------------------------------------------------- root points
def joint_root(joints, root_joints: Sequence[int]):
    """(..., K, 3) joints -> (..., 1, 3) root: the mean of the ``root_joints`` rows."""
    indices = list(root_joints)
    # max(.., 1): a topology without joints (K = 0) has a zero joint root.
    return joints[..., indices, :].sum(-2)[..., None, :] / max(len(indices), 1)


def mesh_root(vertices, root_regressor):
    """(..., V0, 3) full-resolution mesh -> (..., 1, 3) root point ``root_regressor @ vertices``.

    ``root_regressor`` is (V0,), of the same array type as ``vertices`` (and on its device).
    """
    return (root_regressor @ vertices)[..., None, :]


def centre_joints(joints, root_joints: Sequence[int]):
    """Joints minus their joint root (same shape)."""
    return joints - joint_root(joints, root_joints)


def centre_mesh(vertices, root_regressor):
    """A full-resolution mesh minus its mesh root (same shape)."""
    return vertices - mesh_root(vertices, root_regressor)


def root_centred(outputs: dict, root_regressor, root_joints: Sequence[int]) -> dict:
    """The camera's frame for a network output dict (torch tensors or NumPy arrays).

    Returns ``joints`` (centred on their joint root), ``mesh_joints`` and every mesh level
    (``vertices_by_level``, fine first; ``fine_vertices``) centred on the root point of the fine
    mesh, plus the subtracted ``joint_root`` and ``mesh_root`` (..., 1, 3). The weak-perspective
    ``camera`` of the output applies to these points.
    """
    levels = outputs["vertices_by_level"]
    fine = levels[0]
    root = mesh_root(fine, root_regressor.to(fine.dtype) if hasattr(root_regressor, "to") else root_regressor)
    joints = outputs["joints"]
    centred = {
        "joints": centre_joints(joints, root_joints),
        "joint_root": joint_root(joints, root_joints),
        "mesh_root": root,
        "vertices_by_level": tuple(level - root for level in levels),
    }
    centred["fine_vertices"] = centred["vertices_by_level"][0]
    if outputs.get("mesh_joints") is not None:
        centred["mesh_joints"] = outputs["mesh_joints"] - root
    return centred


# ----------------------------------------------------------------------------- projections
def weak_perspective_project(points, camera):
    """(..., N, 3) root-centred points, (..., 3) cameras ``(s, tx, ty)`` -> (..., N, 2)
    crop-normalised coordinates ``s * (X[:2] + (tx, ty))``."""
    if not hasattr(camera, "shape"):  # a plain (s, tx, ty) sequence
        camera = np.asarray(camera, dtype=np.float64)
    if not hasattr(points, "shape"):
        points = np.asarray(points, dtype=np.float64)
    return camera[..., None, 0:1] * (points[..., :2] + camera[..., None, 1:3])


def perspective_project(
    points: np.ndarray, intrinsics: np.ndarray, translation: np.ndarray | None = None
) -> np.ndarray:
    """Pinhole projection of (..., 3) camera-space metres (after ``+ translation``) to pixels."""
    points = np.asarray(points, dtype=np.float64)
    if translation is not None:
        points = points + np.asarray(translation, dtype=np.float64)
    uv1 = points @ np.asarray(intrinsics, dtype=np.float64).T
    return uv1[..., :2] / points[..., 2:3]


__all__ = [
    "ANTIALIAS_FACTOR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCALE_UNIT",
    "centre_joints",
    "centre_mesh",
    "crop_matrix",
    "joint_root",
    "mesh_root",
    "normalise_image",
    "normalised_matrix",
    "perspective_project",
    "root_centred",
    "rotation_2d",
    "scale_from_side",
    "side_from_scale",
    "warp_crop",
    "weak_perspective_project",
]
