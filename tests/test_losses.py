"""Each loss term on hand-made cases, gating by availability, translation invariance, and equality
with a re-implementation of the released training step."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fastmetro.conventions import weak_perspective_project as project
from fastmetro.engine.losses import LossConfig, MeshCriterion, masked_l1
from fastmetro.topology import Topology


def tiny_topology(levels=3) -> Topology:
    """6-vertex fine mesh (an octahedron) -> 4 -> 2 vertices; 4 joints, root = joints 2 and 3; the
    mesh root is the mean of those two joints' rows, so both roots are the same point."""
    fine = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float) * 0.1
    faces0 = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    faces1 = np.array([[0, 2, 1], [0, 3, 1], [0, 1, 2]])  # level-1 vertices = fine 0, 1, 2, 3
    faces2 = np.array([[0, 1, 0]])
    kept = [np.array([0, 1, 2, 3]), np.array([0, 1])]
    up0 = sp.csr_matrix(np.vstack([np.eye(4), np.full((2, 4), 0.25)]))
    up1 = sp.csr_matrix(np.array([[1, 0], [0, 1], [0.5, 0.5], [0.5, 0.5]]))
    regressor = np.zeros((4, 6))
    regressor[0, 4] = regressor[1, 5] = 1.0
    regressor[2, [0, 2]] = 0.5
    regressor[3, [1, 3]] = 0.5
    counts = (6, 4, 2)[:levels]
    return Topology(
        name="tiny",
        level_vertex_counts=counts,
        faces=(faces0, faces1, faces2)[:levels],
        kept_indices=tuple(kept[: levels - 1]),
        upsample=(up0, up1)[: levels - 1],
        coarse_adjacency=sp.csr_matrix(np.ones((counts[-1], counts[-1])) - np.eye(counts[-1])),
        joint_regressor=regressor,
        joint_names=("a", "b", "c", "d"),
        joint_flip=np.array([0, 1, 3, 2]),
        root_joints=(2, 3),
        root_regressor=(regressor[2] + regressor[3]) / 2,
        template=fine,
    )


def make_case(topology, batch=2):
    """Ground truth and a perfect prediction for it."""
    generator = torch.Generator().manual_seed(0)
    template = torch.tensor(topology.template, dtype=torch.float32)
    fine = template[None] + 0.01 * torch.randn(batch, topology.num_vertices, 3, generator=generator)
    regressor = torch.tensor(topology.joint_regressor, dtype=torch.float32)
    joints = torch.einsum("kv,bvc->bkc", regressor, fine)
    root_joints = joints[:, [2, 3]].mean(dim=1, keepdim=True)  # = the mesh root here
    camera = torch.tensor([[2.0, 0.1, -0.2]] * batch)
    # The camera applies to root-centred points.
    joints_2d = torch.cat([project(joints - root_joints, camera), torch.ones(batch, 4, 1)], dim=-1)
    batch_dict = {
        "joints_3d": torch.cat([joints - root_joints, torch.ones(batch, 4, 1)], dim=-1),
        "joints_2d": joints_2d,
        "vertices": fine - root_joints,
        "has_joints_3d": torch.ones(batch),
        "has_joints_2d": torch.ones(batch),
        "has_vertices": torch.ones(batch),
    }
    levels = [fine] + [fine[:, topology.level_indices(level)] for level in range(1, topology.num_levels)]
    outputs = {
        "camera": camera.clone(),
        "joints": joints.clone(),
        "mesh_joints": joints.clone(),
        "vertices_by_level": tuple(level.clone() for level in levels),
    }
    return outputs, batch_dict


@pytest.fixture
def topology():
    return tiny_topology()


def shifted(outputs: dict, shift) -> dict:
    """The prediction translated rigidly (joint tokens, mesh joints and every mesh level)."""
    shift = torch.as_tensor(shift, dtype=torch.float32)
    return {
        **outputs,
        "joints": outputs["joints"] + shift,
        "mesh_joints": outputs["mesh_joints"] + shift,
        "vertices_by_level": tuple(v + shift for v in outputs["vertices_by_level"]),
    }


def test_perfect_prediction_is_zero(topology):
    outputs, batch = make_case(topology)
    # The raw prediction is *not* root-centred (the release never constrains its offset): the
    # loss centres it before projecting, so the camera is unchanged.
    outputs = shifted(outputs, [0.3, -0.1, 2.0])
    # edge_self (the mean predicted edge length, a shrinking prior) is never 0 on a real mesh.
    terms = MeshCriterion(topology, LossConfig(edge_self_weight=0.0))(outputs, batch)
    assert terms["edge_self"].item() > 0.1
    for name, value in terms.items():
        if name != "edge_self":  # total: float32 rounding of 2 m offsets, times weights of 1000
            assert value.abs().item() < (1e-3 if name in ("total", "main") else 1e-6), name


def test_joints_3d_hand_checked(topology):
    outputs, batch = make_case(topology)
    outputs["joints"][0, 0, 1] += 0.012  # joint 0 is not a root joint: no re-centring effect
    terms = MeshCriterion(topology, LossConfig(edge_normal_weight=0))(outputs, batch)
    # mean over 2 samples x 4 joints x 3 coords
    assert terms["joints_3d"].item() == pytest.approx(0.012 / 24, rel=1e-4)
    assert terms["mesh_joints_3d"].item() == pytest.approx(0.0, abs=1e-7)
    batch["joints_3d"][0, 0, 3] = 0.0  # zero confidence on that joint
    terms = MeshCriterion(topology, LossConfig(edge_normal_weight=0))(outputs, batch)
    assert terms["joints_3d"].item() == pytest.approx(0.0, abs=1e-7)


def test_joints_3d_recentred_on_root_joints(topology):
    outputs, batch = make_case(topology)
    outputs["joints"][:, 2, 0] += 0.04  # moving one hip moves the root by 0.02
    terms = MeshCriterion(topology)(outputs, batch)
    # After centring: joint 2 is 0.02 off, the other three joints 0.02 off, x only: 4 * 0.02 / 12.
    assert terms["joints_3d"].item() == pytest.approx(4 * 0.02 / 12, rel=1e-4)


def test_every_term_is_invariant_to_a_rigid_translation(topology):
    outputs, batch = make_case(topology)
    generator = torch.Generator().manual_seed(3)
    noisy = {
        **outputs,
        "camera": outputs["camera"] * 1.1,
        "joints": outputs["joints"] + 0.02 * torch.randn(outputs["joints"].shape, generator=generator),
        "mesh_joints": outputs["mesh_joints"] + 0.01,
        "vertices_by_level": tuple(
            v + 0.02 * torch.randn(v.shape, generator=generator) for v in outputs["vertices_by_level"]
        ),
    }
    batch["has_joints_2d"][1] = 0.0
    batch["joints_2d"][1, :, 2] = 0.0
    criterion = MeshCriterion(topology)
    reference = criterion(noisy, batch)
    assert reference["joints_2d"].item() > 1e-3 and reference["vertices"].item() > 1e-3
    for shift in ([0.3, 0.3, 0.3], [-2.0, 1.0, 5.0]):
        terms = criterion(shifted(noisy, shift), batch)
        for name, value in reference.items():
            assert terms[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name


def test_joints_2d_projection(topology):
    outputs, batch = make_case(topology)
    outputs["camera"][1, 0] = 3.0  # wrong scale for sample 1 only
    terms = MeshCriterion(topology)(outputs, batch)
    joints = outputs["joints"][1] - outputs["joints"][1, [2, 3]].mean(dim=0)
    expected = ((3.0 - 2.0) * (joints[:, :2] + outputs["camera"][1, 1:])).abs().sum() / (2 * 4 * 2)
    assert terms["joints_2d"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert terms["mesh_joints_2d"].item() == pytest.approx(expected.item(), rel=1e-4)
    batch["joints_2d"][1, :, 2] = 0.0  # invisible joints do not count
    assert MeshCriterion(topology)(outputs, batch)["joints_2d"].item() == pytest.approx(0.0, abs=1e-7)


def test_joints_2d_batch_average_is_released_and_available_is_a_switch(topology):
    outputs, batch = make_case(topology, batch=4)
    outputs["camera"][0, 0] = 3.0
    batch["has_joints_2d"][2:] = 0.0  # half the batch has no 2D labels
    released = MeshCriterion(topology)(outputs, batch)["joints_2d"].item()
    available = MeshCriterion(topology, LossConfig(joints_2d_average="available"))(outputs, batch)["joints_2d"].item()
    assert released > 0 and available == pytest.approx(2 * released, rel=1e-5)  # 4 vs 2 samples


def test_gating_uses_only_available_samples(topology):
    outputs, batch = make_case(topology)
    outputs["joints"][1] += torch.randn(4, 3, generator=torch.Generator().manual_seed(2))  # sample 1 way off
    outputs["vertices_by_level"][0][1, 4] += 0.5
    outputs["camera"][1] = torch.tensor([5.0, 1.0, 1.0])
    for key in ("has_joints_3d", "has_joints_2d", "has_vertices"):
        batch[key][1] = 0.0
    # edge_self (the mean predicted edge length, a shrinking prior) is never 0 on a real mesh.
    terms = MeshCriterion(topology, LossConfig(edge_self_weight=0.0))(outputs, batch)
    assert terms["edge_self"].item() > 0.1
    for name, value in terms.items():
        if name != "edge_self":
            assert value.abs().item() < 1e-6, name
    # Sample 0 alone, with an error: normalised by one sample, not two.
    outputs["joints"][0, 0, 0] += 0.012
    terms = MeshCriterion(topology)(outputs, batch)
    assert terms["joints_3d"].item() == pytest.approx(0.012 / 12, rel=1e-4)


def test_no_available_sample_gives_zero_not_nan(topology):
    outputs, batch = make_case(topology)
    for key in ("has_joints_3d", "has_joints_2d", "has_vertices"):
        batch[key][:] = 0.0
    outputs["joints"].requires_grad_(True)
    terms = MeshCriterion(topology)(outputs, batch)
    for name, value in terms.items():
        assert torch.isfinite(value) and value.item() == 0.0, name
    terms["total"].backward()
    assert torch.isfinite(outputs["joints"].grad).all() and outputs["joints"].grad.abs().sum() == 0


def test_vertex_levels_and_weights(topology):
    outputs, batch = make_case(topology)
    # Vertex 0 is a root vertex at every level: moving it in the fine mesh moves the fine root
    # (weight 1/4 in the root regressor) by 0.015 and vertex 0 itself by 0.06 - 0.015.
    outputs["vertices_by_level"][0][:, 0, 2] += 0.06
    terms = MeshCriterion(topology, LossConfig(edge_normal_weight=0))(outputs, batch)
    root_shift = 0.06 / 4
    fine_expected = ((0.06 - root_shift) + 5 * root_shift) / 18  # per sample: 6 vertices x 3 coords
    assert terms["vertices_level0"].item() == pytest.approx(fine_expected, rel=1e-4)
    # Coarser levels are centred on the *predicted fine* root, so they see the root shift.
    assert terms["vertices_level1"].item() == pytest.approx(4 * root_shift / 12, rel=1e-4)
    assert terms["vertices_level2"].item() == pytest.approx(2 * root_shift / 6, rel=1e-4)
    expected = 0.25 * fine_expected + 0.5 * 4 * root_shift / 12 + 0.25 * 2 * root_shift / 6
    assert terms["vertices"].item() == pytest.approx(expected, rel=1e-4)


def test_two_level_topology_uses_half_half():
    topology = tiny_topology(levels=2)
    criterion = MeshCriterion(topology)
    assert criterion.level_weights == [0.5, 0.5]
    assert criterion.edge_level == 0 and criterion.edge_self_weight == 0.0
    outputs, batch = make_case(topology)
    outputs["vertices_by_level"][1][:, 0, 0] += 0.03
    terms = criterion(outputs, batch)
    assert terms["vertices"].item() == pytest.approx(0.5 * 0.03 / 12, rel=1e-4)


def test_edge_and_normal(topology):
    outputs, batch = make_case(topology)
    criterion = MeshCriterion(topology)
    assert criterion.edge_level == 1  # intermediate level for three-level topologies
    # Uniform scaling keeps face normals but changes every edge length.
    outputs["vertices_by_level"] = tuple(v * 1.5 for v in outputs["vertices_by_level"])
    terms = criterion(outputs, batch)
    assert terms["edge"].item() > 1e-3
    assert terms["normal"].item() == pytest.approx(0.0, abs=1e-5)
    # A flattened mesh changes normals.
    outputs, batch = make_case(topology)
    outputs["vertices_by_level"][1][:, :, 2] = 0.0
    outputs["vertices_by_level"][1][:, 0, 2] = 0.05
    assert criterion(outputs, batch)["normal"].item() > 1e-3


def test_laplacian_sees_a_coarse_fold_that_a_translation_does_not(topology):
    """The coarse Laplacian term: 0 for a translated coarse mesh, > 0 when one vertex leaves its
    neighbours' mean; hand-checked on the 2-vertex coarse level (L = [[1, -1], [-1, 1]])."""
    criterion = MeshCriterion(topology, LossConfig(laplacian_weight=10.0))
    outputs, batch = make_case(topology)
    assert criterion(outputs, batch)["laplacian"].item() == pytest.approx(0.0, abs=1e-7)
    coarse = topology.num_levels - 1
    moved = list(outputs["vertices_by_level"])
    moved[coarse] = moved[coarse] + torch.tensor([0.0, 0.0, 0.02])  # the same shape, moved
    assert criterion({**outputs, "vertices_by_level": tuple(moved)}, batch)["laplacian"].item() < 1e-7
    moved[coarse] = moved[coarse].clone()
    moved[coarse][:, 0, 2] += 0.03  # vertex 0 pulled 3 cm away from vertex 1
    terms = criterion({**outputs, "vertices_by_level": tuple(moved)}, batch)
    # Each vertex's Laplacian moves by 3 cm in z: mean |.| over 2 vertices x 3 coordinates = 0.01 m.
    assert terms["laplacian"].item() == pytest.approx(0.01, rel=1e-4)
    released = MeshCriterion(topology)(outputs, batch)
    assert "laplacian" not in released  # off by default: the released loss is unchanged


def test_total_is_weighted_sum(topology):
    outputs, batch = make_case(topology)
    generator = torch.Generator().manual_seed(1)
    outputs["joints"] += 0.01 * torch.randn(outputs["joints"].shape, generator=generator)
    outputs["vertices_by_level"] = tuple(
        v + 0.01 * torch.randn(v.shape, generator=generator) for v in outputs["vertices_by_level"]
    )
    criterion = MeshCriterion(topology)
    t = criterion(outputs, batch)
    expected = (
        1000 * (t["joints_3d"] + t["mesh_joints_3d"])
        + 100 * t["vertices"]
        + 100 * (t["joints_2d"] + t["mesh_joints_2d"])
        + 100 * (5.0 * t["edge"] + 1e-4 * t["edge_self"] + 0.1 * t["normal"])
    )
    assert t["total"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_masked_l1_matches_mean_over_selected():
    pred = torch.randn(5, 3, 2)
    target = torch.randn(5, 3, 2)
    available = torch.tensor([1.0, 0, 1, 1, 0])
    selected = available.bool()
    expected = (pred[selected] - target[selected]).abs().mean()
    assert masked_l1(pred, target, torch.ones(()), available).item() == pytest.approx(expected.item(), rel=1e-6)


def test_smpl_topology_uses_the_released_loss_faces(smpl_topology, smpl_dir):
    criterion = MeshCriterion(smpl_topology)
    assert criterion.level_weights == [0.25, 0.5, 0.25]
    released_faces = np.load(smpl_dir / "smpl_1723_faces.npy")
    released_edges = np.sort(np.load(smpl_dir / "smpl_1723_edges.npy"), axis=1)
    assert criterion.edge_faces.shape == (3451, 3) and smpl_topology.faces[1].shape == (3442, 3)
    np.testing.assert_array_equal(criterion.edge_faces.numpy(), released_faces)
    ours = {tuple(e) for e in criterion.edges.tolist()}
    assert len(ours) == 5163 and ours == {tuple(e) for e in released_edges.tolist()}
