"""Attention visualisation as in the paper's Figure 6.

For one joint: (1) its decoder self-attention to the coarse mesh vertices, upsampled to the full
mesh with the topology's fixed upsampling matrices and drawn as vertex colours; (2) its decoder
cross-attention to the image tokens, drawn as a heat map over the image. Both are the mean over
heads and over the decoder layers of both transformers, read from the same forward pass that
produced the mesh (``model(images, return_attention=True)``, averaged in
:class:`fastmetro.inference.predictor.Predictor`).
"""

from __future__ import annotations

import cv2
import numpy as np

from fastmetro.conventions import IMAGE_SIZE
from fastmetro.errors import FastMetroError
from fastmetro.inference import camera as cam
from fastmetro.inference.outputs import depth_range
from fastmetro.inference.predictor import PersonPrediction


def colormap(values: np.ndarray) -> np.ndarray:
    """(...,) values in [0, 1] -> (..., 3) RGB float in [0, 1] (OpenCV's JET colour map)."""
    values = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0.0, 1.0)
    indices = (values * 255).round().astype(np.uint8)
    bgr = cv2.applyColorMap(indices.reshape(-1, 1), cv2.COLORMAP_JET).reshape(*values.shape, 3)
    return bgr[..., ::-1].astype(np.float64) / 255.0


def _normalise(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    low, high = float(scores.min()), float(scores.max())
    return (scores - low) / (high - low) if high > low else np.zeros_like(scores)


def vertex_scores(person: PersonPrediction, joint: int, topology) -> np.ndarray:
    """(V0,) self-attention of ``joint`` to the mesh, upsampled from the coarse vertices."""
    if person.joint_self_attention is None:
        raise FastMetroError("attention was not computed (predict with return_attention=True)")
    coarse = np.asarray(person.joint_self_attention[joint], np.float64)
    fine = np.asarray(topology.upsampling_matrix(topology.num_levels - 1, 0) @ coarse).reshape(-1)
    if person.side == "left" and topology.vertex_flip is not None:
        # The scores were computed on the mirrored crop: move them to the un-mirrored vertices.
        fine = fine[topology.vertex_flip]
    return fine


def crop_heatmap(person: PersonPrediction, joint: int, crop_size: int) -> np.ndarray:
    """(crop_size, crop_size) cross-attention of ``joint`` over the (un-mirrored) crop, raw scale."""
    if person.joint_cross_attention is None:
        raise FastMetroError("attention was not computed (predict with return_attention=True)")
    grid = np.asarray(person.joint_cross_attention[joint], np.float32)
    # Token (i, j) covers one cell of the crop; resizing aligns cell centres.
    return cv2.resize(grid, (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)


def image_heatmap(person: PersonPrediction, joint: int, image_size: tuple[int, int], crop_size: int = IMAGE_SIZE):
    """Cross-attention pasted back into the full image: (H, W) scores and (H, W) bool coverage."""
    width, height = image_size
    heat = crop_heatmap(person, joint, crop_size)
    matrix = person.crop_box.crop_matrix(crop_size)
    full = cv2.warpAffine(
        heat,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    inside = (
        cv2.warpAffine(
            np.ones((crop_size, crop_size), np.uint8),
            matrix,
            (width, height),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderValue=0,
        )
        > 0
    )
    return full, inside


def cross_attention_image(
    image: np.ndarray, person: PersonPrediction, joint: int, crop_size: int = IMAGE_SIZE, opacity: float = 0.55
) -> np.ndarray:
    """(H, W, 3) uint8: the image with the joint's cross-attention heat map and the joint marked."""
    height, width = image.shape[:2]
    heat, inside = image_heatmap(person, joint, (width, height), crop_size)
    colors = colormap(_normalise(heat[inside]) if inside.any() else heat[inside]) * 255.0
    out = image.astype(np.float64)
    out[inside] = opacity * colors + (1 - opacity) * out[inside]
    out = out.round().astype(np.uint8)
    _draw_joint(out, person.joints_2d[joint], max(3, int(round(person.crop_box.side / 60))))
    x, y, side, _ = person.crop_box.as_xywh()
    cv2.rectangle(out, (int(round(x)), int(round(y))), (int(round(x + side)), int(round(y + side))), (255, 255, 255), 1)
    return out


def framing_camera(vertices: np.ndarray, size: int, fill: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics (3, 3) and translation (3,) that show ``vertices`` (model space, camera-aligned
    axes) from the front, centred, filling ``fill`` of a ``size`` x ``size`` view."""
    vertices = np.asarray(vertices, np.float64)
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    extent = max(float(np.max(high[:2] - low[:2])), 1e-6)
    depth = 5.0 * extent  # far enough for mild perspective
    focal = fill * size * depth / extent
    centre = (low + high) / 2.0
    translation = np.array([-centre[0], -centre[1], depth - centre[2]])
    middle = (size - 1) / 2.0
    return np.array([[focal, 0.0, middle], [0.0, focal, middle], [0.0, 0.0, 1.0]]), translation


def self_attention_image(
    image: np.ndarray, person: PersonPrediction, joint: int, topology, pool, size: int = 448
) -> np.ndarray:
    """(size, 2 * size, 3) uint8: [the person's crop | the mesh coloured by the joint's self-attention].

    The mesh is seen from the camera's direction, framed to fill the view (independent of the
    predicted camera, so it is visible even when the camera is poor); the joint is marked on both
    (on the crop at its predicted 2D position).
    """
    crop = cam.crop_image(image, person.crop_box, size).copy()
    scores = _normalise(vertex_scores(person, joint, topology))
    intrinsics, translation = framing_camera(person.vertices, size)

    vertices = person.vertices + translation
    near, far = depth_range(vertices)
    rendered = pool.get(size, size).render(
        vertices, person.faces, intrinsics, color=colormap(scores).astype(np.float32), near=near, far=far
    )
    mesh_view = np.full((size, size, 3), 255, np.uint8)
    mesh_view[rendered.mask] = rendered.rgb[rendered.mask]
    radius = max(3, size // 80)
    _draw_joint(mesh_view, cam.perspective_project(person.joints[joint][None], intrinsics, translation)[0], radius)
    joint_in_crop = (person.crop_box.image_to_normalised(person.joints_2d[joint]) + 1.0) * size / 2.0 - 0.5
    _draw_joint(crop, joint_in_crop, radius)
    return np.concatenate([crop, mesh_view], axis=1)


def _draw_joint(image: np.ndarray, point, radius: int) -> None:
    if not np.all(np.isfinite(point)):
        return
    center = (int(round(float(point[0]))), int(round(float(point[1]))))
    cv2.circle(image, center, radius + 2, (255, 255, 255), -1, lineType=cv2.LINE_AA)
    cv2.circle(image, center, radius, (230, 30, 30), -1, lineType=cv2.LINE_AA)


__all__ = [
    "colormap",
    "vertex_scores",
    "crop_heatmap",
    "image_heatmap",
    "cross_attention_image",
    "self_attention_image",
    "framing_camera",
]
