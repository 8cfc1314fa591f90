"""Pose ranges, cameras and boxes of the synthetic generator, without Anny or a GL context."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fastmetro.data.synthetic.generator import SynthConfig, box_of, plan_shards, sample_generators
from fastmetro.data.synthetic.poses import (
    BALL_JOINTS,
    HINGES,
    IntersectionTest,
    PoseSampler,
    Skeleton,
    mirror_name,
    part_name,
)
from fastmetro.data.synthetic.scene import Backgrounds, sample_camera, sample_phenotypes


def toy_skeleton() -> Skeleton:
    """Every bone the sampler names, on a plausible A-pose layout (x left, y back, z up)."""
    heads = {"root": (0, 0, 1.0)}
    parents = {"root": -1}
    names = ["root"]

    def add(name, parent, position):
        names.append(name)
        parents[name] = names.index(parent)
        heads[name] = position

    previous = "root"
    for level, name in enumerate(
        ["spine05", "spine04", "spine03", "spine02", "spine01", "neck01", "neck02", "neck03", "head"]
    ):
        add(name, previous, (0, 0, 1.1 + 0.08 * level))
        previous = name
    add("crown", "head", (0, 0, 1.9))
    for side, sign in (("L", 1), ("R", -1)):
        add(f"clavicle.{side}", "spine01", (sign * 0.05, 0, 1.45))
        add(f"upperarm01.{side}", f"clavicle.{side}", (sign * 0.18, 0, 1.45))
        add(f"lowerarm01.{side}", f"upperarm01.{side}", (sign * 0.38, -0.02, 1.25))
        add(f"lowerarm02.{side}", f"lowerarm01.{side}", (sign * 0.48, -0.04, 1.15))
        add(f"wrist.{side}", f"lowerarm02.{side}", (sign * 0.56, -0.05, 1.07))
        for digit in range(1, 6):
            base = (sign * (0.6 + 0.01 * digit), -0.05 - 0.01 * digit, 1.03)
            add(f"finger{digit}-1.{side}", f"wrist.{side}", base)
            add(f"finger{digit}-2.{side}", f"finger{digit}-1.{side}", (base[0] + sign * 0.02, base[1], base[2] - 0.02))
            add(f"finger{digit}-3.{side}", f"finger{digit}-2.{side}", (base[0] + sign * 0.03, base[1], base[2] - 0.04))
            add(f"tip{digit}.{side}", f"finger{digit}-3.{side}", (base[0] + sign * 0.04, base[1], base[2] - 0.05))
        add(f"upperleg01.{side}", "root", (sign * 0.1, 0, 0.95))
        add(f"lowerleg01.{side}", f"upperleg01.{side}", (sign * 0.1, 0, 0.5))
        add(f"foot.{side}", f"lowerleg01.{side}", (sign * 0.1, 0, 0.08))
        add(f"toe.{side}", f"foot.{side}", (sign * 0.1, -0.12, 0.02))
    return Skeleton.from_parents(names, np.array([heads[n] for n in names]), [parents[n] for n in names])


def euler_candidates(matrix):
    """Both (x, y, z) Euler solutions of R = Rz Ry Rx (the decomposition is ambiguous past 90 deg)."""
    x, y, z = Rotation.from_matrix(matrix).as_euler("ZYX", degrees=True)[::-1]

    def wrap(angle):
        return (angle + 180.0) % 360.0 - 180.0

    return [np.array([x, y, z]), np.array([wrap(x + 180), wrap(180 - y), wrap(z + 180)])]


def test_sampled_ball_joints_stay_in_range_and_mirror():
    skeleton = toy_skeleton()
    sampler = PoseSampler(skeleton)
    rng = np.random.default_rng(0)
    for _ in range(200):
        pose = sampler.sample(rng)
        assert pose.shape == (len(skeleton.bone_labels), 4, 4)
        np.testing.assert_allclose(
            pose[:, :3, :3] @ pose[:, :3, :3].transpose(0, 2, 1), np.tile(np.eye(3), (len(pose), 1, 1)), atol=1e-5
        )
        for name, (*ranges, _neutral) in BALL_JOINTS.items():
            for side_name, mirrored in (
                ((name, False), (mirror_name(name), True)) if name.endswith(".L") else ((name, False),)
            ):
                candidates = euler_candidates(pose[skeleton.index(side_name), :3, :3])
                for angles in candidates:
                    if mirrored:
                        angles[1:] *= -1
                assert any(
                    all(low - 1e-3 <= value <= high + 1e-3 for value, (low, high) in zip(angles, ranges))
                    for angles in candidates
                ), (side_name, candidates)


def test_hinges_bend_the_right_way():
    skeleton = toy_skeleton()
    sampler = PoseSampler(skeleton)
    rng = np.random.default_rng(1)
    for name, (_limits, towards) in HINGES.items():
        for side_name in (name, mirror_name(name)):
            bent = 0
            for _ in range(30):
                rotation = sampler.sample(rng)[skeleton.index(side_name), :3, :3]
                moved = rotation @ skeleton.direction(side_name)
                forward_shift = -(moved[1] - skeleton.direction(side_name)[1])  # +: towards -y (front)
                if abs(forward_shift) > 1e-3:
                    bent += 1
                    assert (forward_shift > 0) == (towards == "front"), side_name
            assert bent > 10


def test_part_names_and_adjacency():
    assert part_name("upperarm02.L") == "upperarm.L"
    assert part_name("finger3-2.R") == "forearm.R"
    assert part_name("neck02") == "head"
    assert part_name("spine03") == "torso"
    parts = np.array(["torso"] * 4 + ["forearm.L"] * 4)
    test = IntersectionTest(parts, stride=1, depth=0.01)
    assert ("forearm.L", "torso") in test.pairs


def test_intersection_test_finds_a_point_inside_another_part():
    # Two unit-ish "parts": a cube of points with outward normals, and a probe part.
    cube = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64) * 0.1
    normals = cube / np.linalg.norm(cube, axis=1, keepdims=True)
    probe_outside = np.array([[0.3, 0.0, 0.0]] * 2)
    probe_inside = np.array([[0.05, 0.0, 0.0]] * 2)
    parts = np.array(["torso"] * 8 + ["forearm.L"] * 2)
    test = IntersectionTest(parts, stride=1, depth=0.01)
    test.parts = {name: np.flatnonzero(parts == name) for name in set(parts)}  # every vertex
    outside = np.concatenate([cube, probe_outside])
    inside = np.concatenate([cube, probe_inside])
    all_normals = np.concatenate([normals, np.tile([1.0, 0, 0], (2, 1))])
    assert test.accepts(outside, all_normals)
    assert not test.accepts(inside, all_normals)


@pytest.mark.parametrize("seed", range(20))
def test_camera_keeps_every_vertex_in_view(seed):
    rng = np.random.default_rng(seed)
    # A "body": random points in a 0.5 x 0.3 x 1.7 m box, arbitrary placement.
    vertices = rng.uniform(-1, 1, size=(2000, 3)) * [0.25, 0.15, 0.85] + rng.normal(size=3)
    size = 96
    camera = sample_camera(rng, vertices, size)
    points = camera.to_camera(vertices)
    assert (points[:, 2] > 0.1).all()
    pixels = camera.project(points)
    assert (pixels >= -0.5).all() and (pixels <= size - 0.5).all()
    # Not a speck: the body spans a good part of the image.
    assert np.ptp(pixels, axis=0).max() > 0.5 * size
    np.testing.assert_allclose(camera.rotation @ camera.rotation.T, np.eye(3), atol=1e-9)


def test_phenotypes_cover_all_eleven_parameters():
    draws = np.stack([sample_phenotypes(np.random.default_rng(i)) for i in range(300)])
    assert draws.shape == (300, 11)
    assert (draws >= 0).all() and (draws <= 1).all()
    np.testing.assert_allclose(draws[:, 8:].sum(1), 1.0)  # ancestry mixing weights
    assert (draws.std(0) > 0.05).all()


def test_backgrounds_are_varied_images():
    backgrounds = Backgrounds()
    assert len(backgrounds.photos) >= 5
    images = [backgrounds.sample(np.random.default_rng(i), 48) for i in range(12)]
    assert all(image.shape == (48, 48, 3) and image.dtype == np.uint8 for image in images)
    assert len({image.tobytes() for image in images}) == 12


def test_studio_backgrounds_are_plain_backdrops():
    backgrounds = Backgrounds()
    studio = [backgrounds.sample(np.random.default_rng(i), 64, "studio") for i in range(8)]
    mixed = [backgrounds.sample(np.random.default_rng(i), 64, "mixed") for i in range(8)]
    assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in studio)
    assert len({image.tobytes() for image in studio}) == 8  # colours and horizon vary
    # Plain: along a row only grain changes (clutter varies by tens of grey levels).
    row_spread = [float(np.abs(np.diff(image.astype(np.float32), axis=1)).mean()) for image in studio]
    assert max(row_spread) < 6.0
    assert np.mean([float(np.abs(np.diff(i.astype(np.float32), axis=1)).mean()) for i in mixed]) > max(row_spread)
    # Two flat regions (wall above the horizon, floor below): rows agree within each.
    image = studio[0].astype(np.float32).mean(axis=(1, 2))
    assert np.abs(np.diff(image)).max() > 5.0 * np.median(np.abs(np.diff(image)))
    np.testing.assert_array_equal(studio[3], backgrounds.sample(np.random.default_rng(3), 64, "studio"))
    with pytest.raises(ValueError, match="studio"):
        backgrounds.sample(np.random.default_rng(0), 64, "jungle")


def test_box_and_shard_plan():
    center, scale = box_of(np.array([[10.0, 20.0], [30.0, 60.0]]))
    assert center == [20.0, 40.0] and scale == pytest.approx(40 * 1.2 / 200)
    shards = plan_shards(SynthConfig(out_dir=".", num=10, shard_size=4, test_fraction=0.2))
    assert [(s.name, s.start, s.stop) for s in shards] == [
        ("train_00000", 0, 4),
        ("train_00001", 4, 8),
        ("test_00000", 8, 10),
    ]
    streams = sample_generators(3, 5)
    again = sample_generators(3, 5)
    assert streams["pose"].uniform() == again["pose"].uniform()
    assert sample_generators(3, 5)["pose"].uniform() != sample_generators(3, 6)["pose"].uniform()
