"""Augmentation consistency: image, 2D joints, 3D joints and vertices move together."""

from __future__ import annotations

import numpy as np
import pytest

from fastmetro.data.augment import (
    AugmentConfig,
    AugmentParams,
    apply_occlusion,
    apply_pixel_noise,
    crop_image,
    hand_augment_config,
    rotation_2d,
    sample_params,
    transform_joints_2d,
    transform_points_3d,
)

BODY_FLIP = np.array([5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13])


def _scene(seed=0):
    """14 3D joints (metres) and a weak-perspective camera in original-image pixels."""
    rng = np.random.default_rng(seed)
    joints_3d = np.concatenate([rng.normal(scale=0.4, size=(14, 3)) + [0, 0, 5], np.ones((14, 1))], 1)
    pixels_per_metre, offset = 180.0, np.array([310.0, 260.0])
    joints_2d = np.concatenate([pixels_per_metre * joints_3d[:, :2] + offset, np.ones((14, 1))], 1)
    center, scale = np.array([300.0, 250.0]) + rng.normal(scale=10, size=2), 2.1
    return joints_3d, joints_2d, pixels_per_metre, offset, center, scale


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("rotation", [0.0, 23.0, -58.0, 170.0])
@pytest.mark.parametrize("scale_factor", [0.8, 1.0, 1.2])
def test_projection_of_augmented_3d_lands_on_augmented_2d(flip, rotation, scale_factor):
    joints_3d, joints_2d, pixels_per_metre, offset, center, scale = _scene()
    params = AugmentParams(flip=flip, rotation=rotation, scale_factor=scale_factor)
    augmented_2d = transform_joints_2d(joints_2d, center, scale, params, BODY_FLIP)
    augmented_3d = transform_points_3d(joints_3d, params, BODY_FLIP)
    # the camera after the crop, derived by hand: s' = 2 s / side, t' = R (t - c) / s, x flipped
    side = 200 * scale * scale_factor
    camera_scale = 2 * pixels_per_metre / side
    camera_shift = rotation_2d(rotation) @ (offset - center) / pixels_per_metre
    if flip:
        camera_shift[0] = -camera_shift[0]
    projected = camera_scale * (augmented_3d[:, :2] + camera_shift)
    assert np.abs(projected - augmented_2d[:, :2]).max() < 1e-3
    np.testing.assert_array_equal(augmented_2d[:, 2], joints_2d[BODY_FLIP if flip else slice(None), 2])
    np.testing.assert_array_equal(augmented_3d[:, 3], joints_3d[BODY_FLIP if flip else slice(None), 3])


def test_box_maps_to_unit_square():
    center, scale = np.array([100.0, 80.0]), 0.5  # side 100 px
    corners = np.array([[50.0, 30.0, 1], [150.0, 130.0, 1], [100.0, 80.0, 1]])
    out = transform_joints_2d(corners, center, scale, AugmentParams(), None)
    np.testing.assert_allclose(out[:, :2], [[-1, -1], [1, 1], [0, 0]], atol=1e-12)


def test_flip_twice_is_identity():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(14, 4))
    params = AugmentParams(flip=True)
    np.testing.assert_allclose(
        transform_points_3d(transform_points_3d(points, params, BODY_FLIP), params, BODY_FLIP), points
    )
    joints_2d = np.concatenate([rng.uniform(0, 200, (14, 2)), np.ones((14, 1))], 1)
    once = transform_joints_2d(joints_2d, [100, 100], 1.0, params, BODY_FLIP)
    unflipped = transform_joints_2d(joints_2d, [100, 100], 1.0, AugmentParams(), None)
    twice = once[BODY_FLIP].copy()
    twice[:, 0] *= -1
    np.testing.assert_allclose(twice, unflipped)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    flipped_crop = crop_image(image, [80, 60], 0.5, params, 64)
    np.testing.assert_array_equal(flipped_crop[:, ::-1], crop_image(image, [80, 60], 0.5, AugmentParams(), 64))


def test_flip_needs_permutation():
    with pytest.raises(ValueError, match="permutation"):
        transform_points_3d(np.zeros((3, 3)), AugmentParams(flip=True), None)


@pytest.mark.parametrize(
    "params",
    [
        AugmentParams(),
        AugmentParams(rotation=37.0, scale_factor=0.9),
        AugmentParams(flip=True, rotation=-50.0, scale_factor=1.2),
        AugmentParams(flip=True, rotation=120.0),
    ],
)
def test_image_content_moves_with_the_joints(params):
    image = np.zeros((300, 400, 3), np.uint8)
    dot = np.array([231.0, 118.0])
    image[117:120, 230:233] = 255  # 3x3 bright dot centred on the joint
    center, scale, size = np.array([205.0, 140.0]), 1.3, 128
    crop = crop_image(image, center, scale, params, size)
    brightness = crop.astype(float).sum(-1)
    rows, cols = np.nonzero(brightness > 0.25 * brightness.max())
    weights = brightness[rows, cols]
    found = np.array([np.average(cols, weights=weights), np.average(rows, weights=weights)])
    found_normalised = (2 * found + 1) / size - 1
    expected = transform_joints_2d(np.array([[*dot, 1.0]]), center, scale, params, np.array([0]))[0, :2]
    assert np.abs(found_normalised - expected).max() < 2.0 / size  # within one crop pixel


def test_pixel_noise_is_per_channel_and_clipped():
    crop = np.full((4, 4, 3), 200, np.uint8)
    out = apply_pixel_noise(crop, AugmentParams(channel_gain=(0.5, 1.0, 1.4)))
    np.testing.assert_allclose(out[0, 0], [100, 200, 255])


def test_sampled_parameters_follow_released_distributions():
    rng = np.random.default_rng(0)
    draws = [sample_params(AugmentConfig(), rng) for _ in range(4000)]
    rotations = np.array([d.rotation for d in draws])
    scales = np.array([d.scale_factor for d in draws])
    gains = np.array([d.channel_gain for d in draws])
    assert abs(np.mean(rotations == 0) - 0.6) < 0.03
    assert np.abs(rotations).max() <= 60 and np.abs(rotations).max() > 55
    assert 25 < np.std(rotations[rotations != 0]) < 32
    assert scales.min() >= 0.75 and scales.max() <= 1.25
    assert gains.min() >= 0.6 and gains.max() <= 1.4
    assert abs(np.mean([d.flip for d in draws]) - 0.5) < 0.03
    assert all(d.occlusion_seed is None for d in draws)  # occlusion off by default
    hand = [sample_params(hand_augment_config(), rng) for _ in range(2000)]
    hand_rotations = np.array([d.rotation for d in hand])
    assert not any(d.flip for d in hand)
    assert np.abs(hand_rotations).max() <= 180 and np.abs(hand_rotations).max() > 120
    assert sample_params(None, rng) == AugmentParams()


def test_occlusion_option_paints_patches():
    config = AugmentConfig(occlusion_prob=1.0)
    params = sample_params(config, np.random.default_rng(1))
    assert params.occlusion_seed is not None
    crop = np.zeros((64, 64, 3), np.float32)
    occluded = apply_occlusion(crop, params, config)
    changed = np.any(occluded != 0, axis=-1).mean()
    assert 0.005 < changed < 0.9
    np.testing.assert_array_equal(apply_occlusion(crop, params, config), occluded)  # deterministic per draw


def test_training_crop_equals_inference_crop():
    """Training and inference cut the same pixels for the same box (one crop convention), also
    for a box so large that the warp area-averages first."""
    from fastmetro.conventions import side_from_scale
    from fastmetro.data.augment import AugmentParams as Params
    from fastmetro.inference.camera import CropBox
    from fastmetro.inference.camera import crop_image as inference_crop

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for center, scale, size in (((123.4, 87.6), 1.37, 224), ((200.0, 150.0), 0.6, 96), ((210.5, 140.2), 2.1, 64)):
        training = crop_image(image, center, scale, Params(), size)
        inference = inference_crop(image, CropBox(center, side_from_scale(scale)), size)
        np.testing.assert_array_equal(training, inference)
        # Flipped training crops are the mirrored inference crop (left hands run mirrored).
        flipped = crop_image(image, center, scale, Params(flip=True), size)
        np.testing.assert_array_equal(
            flipped, inference_crop(image, CropBox(center, side_from_scale(scale)), size, True)
        )
    # The large box (420 px side -> 64 px) is area-averaged: a plain bilinear warp differs.
    import cv2

    from fastmetro.conventions import crop_matrix

    plain = cv2.warpAffine(image, crop_matrix((210.5, 140.2), 420.0, 64), (64, 64), flags=cv2.INTER_LINEAR)
    assert np.abs(plain.astype(int) - crop_image(image, (210.5, 140.2), 2.1, Params(), 64).astype(int)).mean() > 5
