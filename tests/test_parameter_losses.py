"""The SMPL parameter regressor's training: augmented pose targets and the released losses."""

import numpy as np
import pytest
import torch

from fastmetro.conventions import centre_mesh, weak_perspective_project
from fastmetro.data.augment import AugmentParams, augment_pose
from fastmetro.data.body_models import BodyModel, axis_angle_to_matrix
from fastmetro.engine.losses import LossConfig, MeshCriterion
from test_model_spec import smpl_like_body_model


def test_rotating_the_pose_rotates_the_mesh():
    """augment_pose's in-plane rotation of the global orientation = the rotation the dataset
    applies to the ground-truth vertices (up to the root, which the samples remove)."""
    from data_helpers import tiny_body_model_arrays
    from fastmetro.data.augment import transform_points_3d

    layer = BodyModel(tiny_body_model_arrays())
    rng = np.random.default_rng(0)
    pose, betas = rng.normal(scale=0.4, size=15), torch.zeros(1, 10)
    params = AugmentParams(rotation=35.0)
    vertices = layer(torch.tensor(pose[None], dtype=torch.float32), betas).vertices[0].double().numpy()
    rotated = layer(torch.tensor(augment_pose(pose, params)[None], dtype=torch.float32), betas).vertices[0]
    expected = transform_points_3d(vertices, params, None)
    np.testing.assert_allclose(
        rotated.double().numpy() - rotated.double().numpy().mean(0), expected - expected.mean(0), atol=1e-5
    )


def test_flipping_a_pose_mirrors_rotations_and_swaps_sides():
    pose = np.arange(72, dtype=np.float64) / 100
    flipped = augment_pose(pose, AugmentParams(flip=True)).reshape(24, 3)
    assert np.allclose(flipped[1], pose.reshape(24, 3)[2] * [1, -1, -1])  # left hip <- mirrored right hip
    assert np.allclose(augment_pose(flipped.reshape(-1), AugmentParams(flip=True)), pose)  # an involution
    # A mirrored rotation is M R M with M = diag(-1, 1, 1).
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    original = axis_angle_to_matrix(torch.tensor(pose.reshape(24, 3)[0]))
    torch.testing.assert_close(axis_angle_to_matrix(torch.tensor(flipped[0])), mirror @ original @ mirror)


@pytest.fixture(scope="module")
def smpl_case(smpl_topology):
    layer = smpl_like_body_model(np.asarray(smpl_topology.template))
    generator = torch.Generator().manual_seed(5)
    pose = 0.3 * torch.randn(2, 72, generator=generator, dtype=torch.float64)
    betas = torch.randn(2, 10, generator=generator, dtype=torch.float64)
    root = torch.tensor(np.asarray(smpl_topology.root_regressor), dtype=torch.float32)
    regressor = torch.tensor(np.asarray(smpl_topology.joint_regressor), dtype=torch.float32)
    mesh = centre_mesh(layer(pose.float(), betas.float()).vertices, root)
    joints = torch.einsum("kv,bvc->bkc", regressor, mesh)
    camera = torch.tensor([[1.1, 0.1, -0.05], [0.9, -0.2, 0.1]])
    batch = {
        "joints_3d": torch.cat([joints, torch.ones(2, 14, 1)], -1),
        "joints_2d": torch.cat([weak_perspective_project(joints, camera), torch.ones(2, 14, 1)], -1),
        "vertices": mesh,
        "smpl_pose": pose.float(),
        "smpl_betas": betas.float(),
        "has_joints_3d": torch.ones(2),
        "has_joints_2d": torch.ones(2),
        "has_vertices": torch.ones(2),
        "has_smpl": torch.ones(2),
    }
    levels = (mesh, mesh[:, smpl_topology.level_indices(1)], mesh[:, smpl_topology.level_indices(2)])
    outputs = {
        "camera": camera,
        "joints": joints + 0.3,
        "vertices_by_level": tuple(v + 0.3 for v in levels),
        "smpl_rotmat": axis_angle_to_matrix(pose.reshape(2, 24, 3)).float(),
        "smpl_betas": betas.float(),
    }
    return layer, outputs, batch


def test_perfect_parameters_give_zero_and_errors_are_weighted_as_released(smpl_topology, smpl_case):
    layer, outputs, batch = smpl_case
    criterion = MeshCriterion(smpl_topology, LossConfig(edge_normal_weight=0), body_model=layer)
    terms = criterion(outputs, batch)
    for name in ("smpl_params", "smpl_vertices", "smpl_joints_3d", "smpl_joints_2d"):
        assert terms[name].item() < 1e-5, name
    wrong = {**outputs, "smpl_betas": outputs["smpl_betas"] + 0.5}
    terms = criterion(wrong, batch)
    assert terms["smpl_params"].item() == pytest.approx(0.1 * 0.25, rel=1e-4)  # 0.1 x MSE(betas)
    assert terms["smpl_vertices"].item() > 1e-5
    total = terms["main"] + 1000 * terms["smpl_total"]
    assert terms["total"].item() == pytest.approx(total.item(), rel=1e-5)
    # The released Human3.6M stage: the main loss only nudges (x 1e-8).
    h36m = MeshCriterion(smpl_topology, LossConfig(edge_normal_weight=0, main_weight=1e-8), body_model=layer)
    assert h36m(wrong, batch)["total"].item() == pytest.approx(1000 * terms["smpl_total"].item(), rel=1e-4)
    # Without the body model (or the regressor's outputs) the SMPL terms do not exist.
    assert "smpl_total" not in MeshCriterion(smpl_topology)(outputs, batch)
