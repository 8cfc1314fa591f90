"""Crop / uncrop geometry: boxes, the crop warp, and weak-perspective paste-back."""

from __future__ import annotations

import numpy as np
import pytest

# Before any EGL context: torchvision's extension loaded after Mesa's llvmpipe segfaults.
import torchvision.ops  # noqa: F401

from fastmetro.inference import camera as cam


def smpl_in_camera(smpl_topology, translation=(0.4, 0.1, 6.0), yaw_deg=25.0):
    """SMPL template rotated to face an OpenCV camera (y down), yawed, placed at ``translation``."""
    vertices = np.asarray(smpl_topology.template, dtype=np.float64) * np.array([1.0, -1.0, -1.0])
    angle = np.deg2rad(yaw_deg)
    yaw = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    return vertices @ yaw.T + np.asarray(translation)


def tight_box(pixels: np.ndarray) -> tuple[float, float, float, float]:
    low, high = pixels.min(0), pixels.max(0)
    return (low[0], low[1], high[0] - low[0], high[1] - low[1])


def test_square_box_keeps_centre_and_uses_longer_side():
    box = cam.square_box((10, 20, 30, 80), expand=1.2)
    assert box.center == (25.0, 60.0)
    assert box.side == pytest.approx(96.0)
    assert box.scale == pytest.approx(0.48)
    x, y, w, h = box.as_xywh()
    assert (x + w / 2, y + h / 2) == pytest.approx(box.center) and w == h == pytest.approx(96.0)


@pytest.mark.parametrize(
    "box", [(0, 0, 0, 10), (0, 0, 10, -1), (float("nan"), 0, 5, 5), (700, 10, 50, 50), (-80, 10, 50, 50), (1, 2, 3)]
)
def test_bad_boxes_are_refused(box):
    from fastmetro.errors import FastMetroError

    with pytest.raises(FastMetroError):
        cam.square_box(box, image_size=(640, 480))


def test_partly_outside_box_is_allowed_and_padded_with_zeros():
    image = np.full((100, 100, 3), 200, np.uint8)
    box = cam.square_box((-50, -50, 100, 100), image_size=(100, 100))
    crop = cam.crop_image(image, box, crop_size=64)
    assert crop[:28, :28].max() == 0  # the part above-left of the image
    assert crop[36:, 36:].min() == 200


def test_normalised_coordinates_round_trip():
    box = cam.CropBox(center=(123.0, 77.0), side=150.0)
    points = np.random.default_rng(0).uniform(0, 300, (20, 2))
    assert np.allclose(box.normalised_to_image(box.image_to_normalised(points)), points)
    corners = box.image_to_normalised(np.array([[48.0, 2.0], [198.0, 152.0]]))  # the box edges
    assert np.allclose(corners, [[-1, -1], [1, 1]])


@pytest.mark.parametrize("side,flip", [(150.0, False), (150.0, True), (900.0, False)])
def test_crop_warp_puts_image_points_where_the_maths_says(side, flip):
    """A bright dot at a known full-image position appears in the crop at the predicted pixel."""
    height, width = 1000, 1200
    image = np.zeros((height, width, 3), np.uint8)
    box = cam.CropBox(center=(603.0, 488.0), side=side)
    dot = np.array([603.0 + 0.31 * side, 488.0 - 0.22 * side])
    radius = max(2, int(side / 60))
    column, row = int(dot[0]), int(dot[1])
    image[row - radius : row + radius + 1, column - radius : column + radius + 1] = 255
    # Centre of the painted square (OpenCV convention: pixel centres at integers).
    dot_centre = np.array([column, row], dtype=np.float64)
    crop = cam.crop_image(image, box, crop_size=224, flip=flip).astype(np.float64)[..., 0]
    rows, cols = np.mgrid[:224, :224]
    weights = crop / crop.sum()
    found = np.array([(weights * cols).sum(), (weights * rows).sum()])
    expected_normalised = box.image_to_normalised(dot_centre)
    if flip:
        expected_normalised[0] = -expected_normalised[0]
    expected = (expected_normalised + 1.0) * 112.0 - 0.5
    assert np.abs(found - expected).max() < 0.3, (found, expected)


def test_crop_perspective_camera_matches_released_convention():
    intrinsics, translation = cam.crop_perspective_camera((0.8, 0.1, -0.2))
    assert intrinsics[0, 0] == 1000.0 and intrinsics[0, 2] == 111.5
    assert np.allclose(translation, [0.1, -0.2, 2 * 1000 / (224 * 0.8)])
    # A point on the z = 0 plane of the model projects to the weak-perspective position.
    point = np.array([[0.3, -0.4, 0.0]])
    pixels = cam.perspective_project(point, intrinsics, translation)
    normalised = cam.weak_perspective_project(point, (0.8, 0.1, -0.2))
    assert np.allclose((pixels + 0.5) / 112.0 - 1.0, normalised)


def test_fit_weak_perspective_recovers_a_known_camera():
    points = np.random.default_rng(1).normal(size=(50, 3))
    truth = np.array([0.7, 0.05, -0.3])
    assert np.allclose(cam.fit_weak_perspective(points, cam.weak_perspective_project(points, truth)), truth)


@pytest.mark.parametrize("true_focal,use_true_focal", [(1100.0, True), (1100.0, False), (3000.0, True)])
def test_paste_back_lands_ground_truth_vertices_on_their_pixels(smpl_topology, true_focal, use_true_focal):
    """Full chain: a known perspective camera sees a body; crop with a box around it; the best
    weak-perspective camera of the crop, mapped back through our uncrop maths, projects the
    ground-truth vertices onto the pixels where the true camera put them."""
    width, height = 960, 720
    true_k = np.array([[true_focal, 0, 470.0], [0, true_focal, 350.0], [0, 0, 1]])
    vertices_camera = smpl_in_camera(smpl_topology, translation=(0.9, 0.2, 7.0))
    truth_pixels = cam.perspective_project(vertices_camera, true_k)
    box = cam.square_box(tight_box(truth_pixels), expand=1.2, image_size=(width, height))
    # The network sees crop-normalised positions and predicts vertices up to translation:
    # model coordinates are the camera-frame body minus its centre.
    model_vertices = vertices_camera - vertices_camera.mean(0)
    weak = cam.fit_weak_perspective(model_vertices, box.image_to_normalised(truth_pixels))
    focal = true_focal if use_true_focal else None
    intrinsics, translation = cam.full_image_camera(weak, box, (width, height), focal_length=focal)
    pasted = cam.perspective_project(model_vertices, intrinsics, translation)
    error = np.linalg.norm(pasted - truth_pixels, axis=1)
    body_height_px = np.ptp(truth_pixels[:, 1])
    # Weak perspective ignores depth variation within the body; at 7 m that costs ~1% of its size.
    assert error.mean() < 0.01 * body_height_px, error.mean()
    assert error.max() < 0.03 * body_height_px, error.max()
    if use_true_focal:
        # With the right focal length the depth is recovered too (up to the weak-perspective fit).
        assert translation[2] == pytest.approx(vertices_camera.mean(0)[2], rel=0.04)
        # The principal point differs from the true one; the translation absorbs it.
    # Independent of F: points on the model's z = 0 plane match the weak-perspective mapping exactly.
    flat = model_vertices.copy()
    flat[:, 2] = 0.0
    assert np.allclose(
        cam.perspective_project(flat, intrinsics, translation),
        box.normalised_to_image(cam.weak_perspective_project(flat, weak)),
        atol=1e-6,
    )


def test_default_focal_length_scales_released_focal_to_the_image():
    assert cam.default_focal_length((448, 300)) == pytest.approx(2000.0)
    box = cam.whole_image_box((224, 224))
    intrinsics, translation = cam.full_image_camera((0.9, 0.1, 0.2), box, (224, 224))
    crop_k, crop_t = cam.crop_perspective_camera((0.9, 0.1, 0.2))
    # For a 224 image cropped whole, the full-image camera is exactly the released crop camera.
    assert np.allclose(intrinsics, crop_k) and np.allclose(translation, crop_t)


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    return float((first & second).sum() / max((first | second).sum(), 1))


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def test_paste_back_with_the_renderer(smpl_topology):
    """Render a body with a known camera, crop the picture with a box around it: (1) the model-
    space vertices drawn with the crop's perspective camera (from a weak-perspective fit) cover
    the body in the crop; (2) drawn with our full-image camera they cover it in the full image."""
    from fastmetro.render import Renderer

    width, height = 640, 480
    # Far and with a long lens, so the weak-perspective fit itself is good (~1 px); the thin arms
    # make IoU sensitive, so also compare silhouette centroids.
    true_k = np.array([[2000.0, 0, 330.0], [0, 2000.0, 230.0], [0, 0, 1]])
    vertices_camera = smpl_in_camera(smpl_topology, translation=(-0.5, 0.2, 12.0), yaw_deg=-30.0)
    faces = smpl_topology.faces[0]
    with Renderer(width, height) as renderer:
        truth = renderer.render(vertices_camera, faces, true_k)
    rows, cols = np.nonzero(truth.mask)
    box = cam.square_box((cols.min(), rows.min(), np.ptp(cols), np.ptp(rows)), expand=1.2, image_size=(width, height))
    model_vertices = vertices_camera - vertices_camera.mean(0)
    weak = cam.fit_weak_perspective(
        model_vertices, box.image_to_normalised(cam.perspective_project(vertices_camera, true_k))
    )

    crop_mask = cam.crop_image(np.repeat(truth.mask[..., None].astype(np.uint8) * 255, 3, axis=2), box)[..., 0] > 127
    crop_k, crop_t = cam.crop_perspective_camera(weak)
    with Renderer(224, 224) as renderer:
        in_crop = renderer.render(model_vertices + crop_t, faces, crop_k)
    assert mask_iou(in_crop.mask, crop_mask) > 0.85
    assert np.linalg.norm(centroid(in_crop.mask) - centroid(crop_mask)) < 1.5

    intrinsics, translation = cam.full_image_camera(weak, box, (width, height))
    with Renderer(width, height) as renderer:
        pasted = renderer.render(model_vertices + translation, faces, intrinsics)
    assert mask_iou(pasted.mask, truth.mask) > 0.9
    assert np.linalg.norm(centroid(pasted.mask) - centroid(truth.mask)) < 1.5
    # A wrong sign of the box offset would move the body off: check that it really matters.
    wrong = cam.full_image_camera(weak, cam.CropBox((box.center[0] + 40, box.center[1]), box.side), (width, height))
    with Renderer(width, height) as renderer:
        shifted = renderer.render(model_vertices + wrong[1], faces, wrong[0])
    assert mask_iou(shifted.mask, truth.mask) < 0.6
