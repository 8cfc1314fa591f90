"""Pose families on the real Anny rig: valid rotations, clean bodies, and the posture each promises."""

from __future__ import annotations

import numpy as np
import pytest

from fastmetro.data.synthetic.pose_builder import rotation_between
from fastmetro.data.synthetic.pose_families import FAMILIES
from fastmetro.data.synthetic.pose_mix import MIXED_WEIGHTS, FamilySampler, parse_pose_mix
from fastmetro.errors import FastMetroError

DRAWS = 8
# LSP-14 joint order of the anny topology's regressor.
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE, R_WRIST = 0, 1, 2, 3, 4, 5, 6
L_WRIST, NECK, HEAD = 11, 12, 13


@pytest.fixture(scope="module")
def posed(synthetic_dataset):
    """{family: (poses (N, J, 4, 4), vertices (N, V, 3), accepted (N,), joints (N, 14, 3))}, mid shape."""
    body = synthetic_dataset.maker.body
    sampler = FamilySampler(body.pose_sampler)
    phenotypes = np.full((DRAWS, 11), 0.5)
    phenotypes[:, 8:] = 1.0 / 3.0
    rest = body.rest(phenotypes)
    result = {}
    for number, family in enumerate(FAMILIES):
        rng = np.random.default_rng([11, number])
        poses = np.stack([sampler.sample(rng, family) for _ in range(DRAWS)])
        vertices = body.pose(rest, list(range(DRAWS)), poses)
        accepted = np.array([body.intersection_test.accepts(v, body.normals(v)) for v in vertices])
        joints = np.stack([body.labels(v.astype(np.float64))[1] for v in vertices])
        result[family] = (poses, vertices, accepted, joints)
    return result


def test_every_family_gives_rotations(posed):
    for family, (poses, *_rest) in posed.items():
        rotations = poses[:, :, :3, :3].astype(np.float64)
        identity = np.broadcast_to(np.eye(3), rotations.shape)
        np.testing.assert_allclose(rotations @ rotations.transpose(0, 1, 3, 2), identity, atol=1e-5, err_msg=family)
        np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5, err_msg=family)
        np.testing.assert_array_equal(poses[:, :, :3, 3], 0.0)  # rotations only
        np.testing.assert_array_equal(poses[:, :, 3], np.broadcast_to([0, 0, 0, 1], poses[:, :, 3].shape))


def test_families_mostly_pass_the_intersection_test(posed):
    # The generator redraws rejected poses (10 attempts); a family that failed often would
    # mostly fall back. Every family keeps at least half of its raw draws clean.
    for family, (_poses, _vertices, accepted, _joints) in posed.items():
        assert accepted.mean() >= 0.5, (family, accepted)


def test_each_family_fallback_pose_is_clean(synthetic_dataset):
    body = synthetic_dataset.maker.body
    sampler = FamilySampler(body.pose_sampler)
    phenotypes = np.array([[0.5] * 8 + [1 / 3] * 3, [0.9, 0.9, 0.2, 0.9, 0.8, 0.5, 0.5, 0.5, 1, 0, 0]])
    rest = body.rest(phenotypes)
    for family in FAMILIES:
        pose = sampler.fallback(family)
        np.testing.assert_array_equal(pose, sampler.fallback(family))  # fixed
        vertices = body.pose(rest, [0, 1], np.stack([pose, pose]))
        for v in vertices:
            depth = body.intersection_test.penetration(v, body.normals(v))
            assert depth <= body.intersection_test.depth, (family, depth)


def _height(joints):
    return joints[..., 2]


def test_families_hold_their_postures(posed):
    stand = posed["standing"][3]
    # Standing: head well above the ankles (upright).
    assert (_height(stand[:, HEAD]) - _height(stand[:, [R_ANKLE, L_ANKLE]]).min(1) > 1.0).all()
    # Lying: the body is horizontal (head and ankles at about the same height).
    lie = posed["lying"][3]
    span = np.linalg.norm(lie[:, HEAD] - lie[:, [R_ANKLE, L_ANKLE]].mean(1), axis=1)
    assert (np.abs(_height(lie[:, HEAD]) - _height(lie[:, [R_ANKLE, L_ANKLE]]).mean(1)) < 0.45 * span).all()
    # Sitting: thighs near horizontal (knees about level with the hips).
    sit = posed["sitting"][3]
    for hip, knee in ((R_HIP, R_KNEE), (L_HIP, L_KNEE)):
        thigh = sit[:, knee] - sit[:, hip]
        assert (np.abs(thigh[:, 2]) < 0.75 * np.linalg.norm(thigh, axis=1)).mean() >= 0.75
    # Kneeling: a knee is at the bottom of the body (within 15 cm of the lowest joint).
    kneel = posed["kneeling"][3]
    assert (_height(kneel[:, [R_KNEE, L_KNEE]]).min(1) - _height(kneel).min(1) < 0.15).all()
    # Squatting: the head sits far lower above the feet than when standing.
    squat = posed["squatting"][3]
    standing_height = np.median(_height(stand[:, HEAD]) - _height(stand).min(1))
    assert (_height(squat[:, HEAD]) - _height(squat).min(1) < 0.8 * standing_height).all()
    # Crawling: trunk horizontal, hands down at the floor.
    crawl = posed["crawling"][3]
    trunk = crawl[:, NECK] - crawl[:, [R_HIP, L_HIP]].mean(1)
    assert (np.abs(trunk[:, 2]) < 0.6 * np.linalg.norm(trunk, axis=1)).all()
    assert (_height(crawl[:, [R_WRIST, L_WRIST]]).max(1) - _height(crawl).min(1) < 0.2).all()
    # Inverted: the head is below the hips in a handstand (most draws) and never high above them.
    flip = posed["inverted"][3]
    head_over_hips = _height(flip[:, HEAD]) - _height(flip[:, [R_HIP, L_HIP]]).mean(1)
    assert (head_over_hips < 0).mean() >= 0.5 and (head_over_hips < 0.45).all()
    # Walking: one foot in front of the other (the ankles apart along the walking direction).
    walk = posed["walking"][3]
    assert (np.abs(walk[:, R_ANKLE, 1] - walk[:, L_ANKLE, 1]) > 0.08).mean() >= 0.75


def test_rotation_between_maps_directions():
    rng = np.random.default_rng(3)
    for _ in range(50):
        a, b = rng.normal(size=3), rng.normal(size=3)
        rotation = rotation_between(a, b)
        np.testing.assert_allclose(rotation @ (a / np.linalg.norm(a)), b / np.linalg.norm(b), atol=1e-9)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
    flipped = rotation_between(np.array([0, 0, 1.0]), np.array([0, 0, -1.0]))
    np.testing.assert_allclose(flipped @ [0, 0, 1.0], [0, 0, -1.0], atol=1e-9)


def test_pose_mix_parsing():
    assert parse_pose_mix("mixed") == MIXED_WEIGHTS
    assert parse_pose_mix("standing") == {"standing": 1.0}
    assert parse_pose_mix("lying=1, sitting=2") == {"sitting": 2.0, "lying": 1.0}  # FAMILIES order
    for bad, message in (
        ("flying", "unknown pose family"),
        ("sitting=x", "not a number"),
        ("sitting=-1", ">= 0"),
        ("sitting=0", "no family"),
    ):
        with pytest.raises(FastMetroError, match=message):
            parse_pose_mix(bad)


def test_family_draws_follow_the_weights():
    rng = np.random.default_rng(0)
    weights = {"sitting": 3.0, "lying": 1.0}
    draws = [FamilySampler.choose(rng, weights) for _ in range(2000)]
    assert set(draws) == {"sitting", "lying"}
    assert 0.7 < draws.count("sitting") / 2000 < 0.8
