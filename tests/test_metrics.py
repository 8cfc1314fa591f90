"""Known-answer tests of the metrics (metres in, millimetres out)."""

import math

import numpy as np
import pytest
import torch

from fastmetro import metrics


def _rotation(axis_angle):
    axis = torch.tensor(axis_angle, dtype=torch.float64)
    angle = axis.norm()
    k = axis / angle
    cross = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _points(batch=3, count=14, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, count, 3, generator=generator, dtype=torch.float64) * 0.3


def test_mpjpe_hand_checked():
    gt = torch.zeros(1, 4, 3)
    pred = gt.clone()
    pred[0, 0] = torch.tensor([0.003, 0.004, 0.0])  # 5 mm off
    pred[0, 1] = torch.tensor([0.0, 0.0, 0.010])  # 10 mm off
    # Root = joints 2 and 3 (unchanged), so nothing is re-centred: (5 + 10 + 0 + 0) / 4.
    assert metrics.mpjpe(pred, gt, root_joints=(2, 3)).item() == pytest.approx(3.75, abs=1e-4)


def test_mpjpe_is_root_aligned():
    gt = _points()
    shifted = gt + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert metrics.mpjpe(shifted, gt, root_joints=(2, 3)).abs().max().item() < 1e-6
    # A constant offset is *not* forgiven by a plain mean point error.
    assert metrics.mean_point_error(shifted, gt).min().item() > 1000


def test_mpjpe_root_changes_answer():
    gt = torch.zeros(1, 3, 3)
    pred = gt.clone()
    pred[0, 0, 0] = 0.006  # move the root joint by 6 mm: after centring every joint is 6 mm off but the root
    # Root = joint 0: pred centred moves joints 1, 2 by -6 mm; errors (0, 6, 6) -> mean 4 mm.
    assert metrics.mpjpe(pred, gt, root_joints=(0,)).item() == pytest.approx(4.0, abs=1e-4)


def test_pa_mpjpe_zero_for_similarity_copy():
    gt = _points()
    rotation = _rotation([0.3, -1.2, 2.0])
    pred = 1.7 * gt @ rotation.T + torch.tensor([0.2, -0.4, 3.0], dtype=torch.float64)
    assert metrics.mpjpe(pred, gt, (2, 3)).min().item() > 10  # far apart before alignment
    assert metrics.pa_mpjpe(pred, gt).abs().max().item() < 1e-4
    assert metrics.pa_mpvpe(pred, gt).abs().max().item() < 1e-4


def test_pa_does_not_undo_a_reflection():
    gt = _points()
    mirrored = gt.clone()
    mirrored[..., 0] *= -1
    assert metrics.pa_mpjpe(mirrored, gt).min().item() > 10.0


def test_pa_hand_checked_scale_only():
    # Two points; the best similarity maps one segment onto the other exactly.
    gt = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]])
    pred = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]])
    aligned = metrics.procrustes_align(pred, gt)
    assert torch.allclose(aligned, gt, atol=1e-6)


def test_pa_known_residual():
    # A unit square vs. the same square with one corner moved out of plane: the best fit cannot
    # be exact; its error must be below the unaligned one and above zero.
    gt = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]]) * 0.1
    pred = gt.clone()
    pred[0, 2, 2] = 0.02
    pa = metrics.pa_mpjpe(pred, gt).item()
    assert 0.0 < pa < metrics.mean_point_error(pred, gt).item()


def test_mpvpe_hand_checked():
    gt = torch.zeros(2, 5, 3)
    pred = gt.clone()
    pred[1] += torch.tensor([0.0, 0.002, 0.0])
    assert metrics.mpvpe(pred, gt).tolist() == pytest.approx([0.0, 2.0], abs=1e-4)


def test_f_score():
    gt = _points(batch=2, count=50)
    assert metrics.f_score(gt, gt, (5.0,)).flatten().tolist() == pytest.approx([1.0, 1.0])
    noisy = gt.clone()
    # Move half the points of sample 0 by 10 mm along x: F@5mm drops, F@15mm stays 1.
    noisy[0, :25, 0] += 0.010
    scores = metrics.f_score(noisy, gt, (5.0, 15.0))
    assert scores[1].tolist() == pytest.approx([1.0, 1.0])
    assert scores[0, 1].item() == pytest.approx(1.0)
    assert scores[0, 0].item() < 0.9


def test_per_sample_metrics_uses_mesh_joints(smpl_topology):
    topology = smpl_topology
    generator = torch.Generator().manual_seed(0)
    vertices = torch.randn(2, topology.num_vertices, 3, generator=generator) * 0.2
    regressor = torch.tensor(topology.joint_regressor, dtype=torch.float32)
    gt_joints = metrics.regress_joints(regressor, vertices)
    # Translation only (small: the H36M regressor rows sum to 0.9996, not exactly 1).
    pred = vertices + torch.tensor([0.05, 0.01, 0.02])
    out = metrics.per_sample_metrics(
        pred, gt_joints, vertices, topology.joint_regressor, topology.root_regressor, topology.root_joints
    )
    for name in metrics.METRIC_NAMES:
        assert out[name].shape == (2,)
        assert out[name].abs().max().item() < 0.05, name
    scaled = vertices * 1.1
    out = metrics.per_sample_metrics(
        scaled, gt_joints, vertices, topology.joint_regressor, topology.root_regressor, topology.root_joints
    )
    assert out["mpjpe"].min().item() > 1.0
    assert out["pa_mpjpe"].max().item() < 1e-3


def test_mean_dihedral_angle_of_a_hinge_and_a_sheet():
    from fastmetro.metrics import face_pairs, mean_dihedral_angle

    faces = np.array([[0, 1, 2], [1, 0, 3]])
    assert face_pairs(faces).tolist() == [[0, 1]]
    angle = np.deg2rad(30.0)
    hinge = np.array([[0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -np.cos(angle), -np.sin(angle)]])
    flat = hinge.copy()
    flat[3] = [0.5, -1, 0]
    both = torch.tensor(np.stack([hinge, flat]), dtype=torch.float32)
    assert mean_dihedral_angle(both, faces).tolist() == pytest.approx([30.0, 0.0], abs=1e-3)


def test_rough_surfaces_have_larger_dihedral_angles():
    from fastmetro.metrics import mean_dihedral_angle

    grid = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0), indexing="ij"), -1).reshape(-1, 2)
    index = np.arange(36).reshape(6, 6)
    faces = np.concatenate(
        [np.stack([index[:-1, :-1], index[1:, :-1], index[1:, 1:]], -1).reshape(-1, 3),
         np.stack([index[:-1, :-1], index[1:, 1:], index[:-1, 1:]], -1).reshape(-1, 3)]
    )  # fmt: skip
    smooth = np.column_stack([grid, 0.05 * grid[:, 0] ** 2])
    rough = smooth + np.column_stack([np.zeros((36, 2)), np.random.default_rng(0).normal(0, 0.3, 36)])
    smooth_angle, rough_angle = mean_dihedral_angle(torch.tensor(np.stack([smooth, rough])).float(), faces)
    assert smooth_angle < 5.0 < 15.0 < rough_angle


def test_surface_metrics_count_folds_per_sample():
    from fastmetro.metrics import FOLD_DEGREES, surface_metrics

    faces = np.array([[0, 1, 2], [1, 0, 3]])
    hinges = []
    for degrees in (30.0, FOLD_DEGREES + 20.0):
        angle = np.deg2rad(degrees)
        hinges.append([[0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -np.cos(angle), -np.sin(angle)]])
    out = surface_metrics(torch.tensor(hinges, dtype=torch.float32), faces)
    assert out["dihedral"].tolist() == pytest.approx([30.0, FOLD_DEGREES + 20.0], abs=1e-3)
    assert out["folded"].tolist() == [0.0, 1.0]
