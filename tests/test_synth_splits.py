"""Generator version 2's scene parts, and the disjoint train / generalisation splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fastmetro.data.synthetic import framing, splits, textures
from fastmetro.data.synthetic.backgrounds import SplitBackgrounds
from fastmetro.data.synthetic.clothing import PATTERN_KINDS, pattern_field, sample_clothing
from fastmetro.data.synthetic.lighting import kelvin_to_rgb, sample_lights
from fastmetro.data.synthetic.pose_families import FAMILIES
from fastmetro.data.synthetic.pose_mix import parse_pose_mix
from fastmetro.data.synthetic.scene import Backgrounds
from fastmetro.errors import FastMetroError


def photo_digests(names):
    return {hashlib.sha256(photo.tobytes()).hexdigest() for photo in Backgrounds(names).photos}


def test_split_sources_are_disjoint():
    train, held_out = splits.SPLITS["train"], splits.SPLITS["generalisation"]
    assert not set(train.photos) & set(held_out.photos)
    assert not set(train.textures) & set(held_out.textures)
    assert not set(train.patterns) & set(held_out.patterns)
    # By content too: two names for one picture (skimage's cat is chelsea) stay on one side.
    train_photos, held_out_photos = photo_digests(train.photos), photo_digests(held_out.photos)
    assert len(train_photos) >= 8 and len(held_out_photos) >= 3
    assert not train_photos & held_out_photos
    assert set(train.textures) | set(held_out.textures) <= set(textures.TEXTURES)
    assert set(train.patterns) | set(held_out.patterns) <= set(PATTERN_KINDS)
    # Held-out families: dropped from the train split's mix, refused when asked for.
    weights = splits.split_pose_weights(train, parse_pose_mix("mixed"), mixed=True)
    assert set(weights) == set(FAMILIES) - set(splits.HELD_OUT_FAMILIES)
    with pytest.raises(FastMetroError, match="held out"):
        splits.split_pose_weights(train, parse_pose_mix("crawling=1,sitting=1"), mixed=False)
    general = splits.split_pose_weights(held_out, parse_pose_mix("mixed"), mixed=True)
    assert set(general) == set(FAMILIES)
    # Lenses: no field of view in both.
    for low, high in held_out.fov_degrees:
        for train_low, train_high in train.fov_degrees:
            assert high <= train_low or low >= train_high
    with pytest.raises(FastMetroError, match="--split"):
        splits.get_split("validation")


def test_split_backgrounds_use_only_their_sources(monkeypatch):
    held_out = SplitBackgrounds(splits.SPLITS["generalisation"])
    train = SplitBackgrounds(splits.SPLITS["train"])
    assert {hashlib.sha256(p.tobytes()).hexdigest() for p in held_out.photos}.isdisjoint(
        {hashlib.sha256(p.tobytes()).hexdigest() for p in train.photos}
    )
    used = []
    for name in textures.TEXTURES:  # record which texture functions each split calls
        original = textures.TEXTURES[name]
        monkeypatch.setitem(
            textures.TEXTURES, name, lambda rng, size, _n=name, _f=original: used.append(_n) or _f(rng, size)
        )
    images = [train.sample(np.random.default_rng(i), 48) for i in range(40)]
    assert set(used) and set(used) <= set(splits.TRAIN_TEXTURES)
    used.clear()
    [held_out.sample(np.random.default_rng(i), 48) for i in range(40)]
    assert set(used) and set(used) <= set(splits.HELD_OUT_TEXTURES)
    assert all(image.shape == (48, 48, 3) and image.dtype == np.uint8 for image in images)
    assert len({image.tobytes() for image in images}) == 40


@pytest.mark.parametrize("name", sorted(textures.TEXTURES))
def test_textures_are_fields_in_the_unit_range(name):
    field = textures.TEXTURES[name](np.random.default_rng(0), 64)
    assert field.shape == (64, 64) and np.isfinite(field).all()
    assert field.min() >= 0.0 and field.max() <= 1.0 and field.std() > 0.02
    np.testing.assert_array_equal(field, textures.TEXTURES[name](np.random.default_rng(0), 64))


def test_lights_vary_in_number_colour_and_direction():
    draws = [sample_lights(np.random.default_rng(i)) for i in range(300)]
    counts = [len(lights) for lights in draws]
    assert set(counts) == {1, 2, 3}
    for lights in draws:
        assert np.linalg.norm(lights[0].direction) == pytest.approx(1.0)
        assert lights[0].direction[2] > 0  # the key light shines into the scene, on the visible side
        assert all(np.allclose(light.ambient, 0) for light in lights[1:])  # one ambient term
    keys = np.array([lights[0].color for lights in draws])
    warmth = keys[:, 0] / keys[:, 2]
    assert warmth.min() < 0.9 and warmth.max() > 1.5  # cool daylight to warm tungsten
    np.testing.assert_allclose(kelvin_to_rgb(6600), [1.0, 1.0, 1.0], atol=0.03)  # about white
    assert kelvin_to_rgb(2700)[2] < 0.6 < kelvin_to_rgb(9000)[2]


@pytest.mark.parametrize("kind", PATTERN_KINDS)
def test_clothing_patterns(kind):
    rng = np.random.default_rng(1)
    points = rng.uniform(-0.3, 0.3, size=(4000, 3)) + [0, 0, 1.0]
    field = pattern_field(np.random.default_rng(2), kind, points)
    assert field.shape == (4000,) and field.min() >= 0 and field.max() <= 1
    if kind == "solid":
        assert (field == 0).all()
    else:
        assert 0.05 < field.mean() < 0.95  # both colours appear
    with pytest.raises(ValueError):
        pattern_field(rng, "paisley", points)


def test_clothing_colours_regions():
    rng = np.random.default_rng(0)
    count = 3000
    points = np.column_stack(
        [rng.uniform(-0.2, 0.2, count), rng.uniform(-0.1, 0.1, count), np.linspace(-0.8, 0.7, count)]
    )
    bands = np.linspace(-0.8, 0.7, count)
    regions = {
        "torso": (bands > 0.0) & (bands < 0.5),
        "hips": (bands > -0.1) & (bands <= 0.0),
        "upper_arm": np.zeros(count, bool),
        "forearm": np.zeros(count, bool),
        "thigh": (bands > -0.4) & (bands <= -0.1),
        "shank": (bands > -0.7) & (bands <= -0.4),
        "feet": bands <= -0.7,
        "head": bands >= 0.5,
        "skull": bands >= 0.6,
    }
    patterned = 0
    for seed in range(20):
        colours = sample_clothing(np.random.default_rng(seed), regions, points, ("stripes", "checks"))
        assert colours.shape == (count, 3) and colours.dtype == np.float32
        assert colours.min() >= 0 and colours.max() <= 1
        torso = colours[regions["torso"]]
        patterned += torso.std(0).max() > 0.08  # two colours on the top, not one flat colour
    assert patterned >= 10


@pytest.mark.parametrize("seed", range(12))
def test_framed_camera_keeps_enough_joints_in_view(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    vertices = rng.uniform(-1, 1, size=(3000, 3)) * [0.25, 0.15, 0.85]
    joints = rng.uniform(-1, 1, size=(14, 3)) * [0.2, 0.1, 0.8]
    size = 96
    monkeypatch.setattr(framing, "CUT_PROBABILITY", 1.0 if seed % 2 else 0.0)
    camera, cut = framing.sample_framed_camera(rng, vertices, joints, size, (20.0, 85.0), ((25.0, 65.0),))
    points = camera.to_camera(vertices)
    assert (points[:, 2] > 0.2).all()  # nothing behind or at the camera
    inside = framing.in_image(camera.project(points), size)
    visible = framing.in_image(camera.project(camera.to_camera(joints)), size).sum()
    if cut:
        assert visible >= framing.MIN_VISIBLE_JOINTS
    else:
        assert inside.all() and visible == 14
    np.testing.assert_allclose(camera.rotation @ camera.rotation.T, np.eye(3), atol=1e-9)


def test_steep_views_look_down():
    # Camera height above the body's centre relative to distance: sin(elevation).
    elevations = []
    vertices = np.random.default_rng(0).uniform(-1, 1, size=(500, 3)) * [0.25, 0.15, 0.85]
    for seed in range(200):
        camera, _ = framing.sample_framed_camera(
            np.random.default_rng(seed), vertices, vertices[:14], 64, (20.0, 85.0), ((25.0, 65.0),)
        )
        up_in_camera = camera.rotation @ np.array([0.0, 0.0, 1.0])  # world up, camera axes (y down)
        view = np.array([0.0, 0.0, 1.0])
        elevations.append(np.degrees(np.arcsin(np.clip(-up_in_camera @ view, -1, 1))))
    elevations = np.array(elevations)
    assert elevations.min() > 19.0 and elevations.max() > 70.0
