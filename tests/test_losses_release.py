"""MeshCriterion against an independent re-implementation of the released FastMETRO body training
step (run_fastmetro_bodymesh.py's loss code, written here from the facts in
../shared/reference/released_fastmetro_facts.md, sec. 6), on the SMPL topology.

The predictions sit 0.3 m off the origin, which the released losses never constrain: a criterion
that projected raw points, or centred them differently, disagrees by orders of magnitude.
"""

import numpy as np
import pytest
import torch

from fastmetro.engine.losses import MeshCriterion

H36M_J17_TO_J14 = [3, 2, 1, 4, 5, 6, 16, 15, 14, 11, 12, 13, 8, 10]


def orthographic_projection(points, camera):
    """METRO/FastMETRO: s * (X_xy + (tx, ty))."""
    camera = camera.view(-1, 1, 3)
    return camera[:, :, 0:1] * (points[:, :, :2] + camera[:, :, 1:])


def keypoint_2d_loss(pred, gt):
    confidence = gt[:, :, -1:].clone()
    return (confidence * torch.nn.functional.l1_loss(pred, gt[:, :, :-1], reduction="none")).mean()


def keypoint_3d_loss(pred, gt, has_3d):
    confidence = gt[:, :, -1:].clone()[has_3d == 1]
    gt = gt[:, :, :-1].clone()[has_3d == 1]
    pred = pred[has_3d == 1]
    if len(gt) == 0:
        return torch.zeros(())
    gt = gt - ((gt[:, 2] + gt[:, 3]) / 2)[:, None]
    pred = pred - ((pred[:, 2] + pred[:, 3]) / 2)[:, None]
    return (confidence * torch.nn.functional.l1_loss(pred, gt, reduction="none")).mean()


def vertices_loss(pred, gt, has_smpl):
    pred, gt = pred[has_smpl == 1], gt[has_smpl == 1]
    return torch.nn.functional.l1_loss(pred, gt) if len(gt) else torch.zeros(())


def edge_lengths(vertices, edges):
    return torch.sqrt(((vertices[:, edges[:, 0]] - vertices[:, edges[:, 1]]) ** 2).sum(2, keepdim=True) + 1e-8)


def normal_loss(pred, gt, faces):
    normalize = torch.nn.functional.normalize
    v1 = normalize(pred[:, faces[:, 1]] - pred[:, faces[:, 0]], p=2, dim=2)
    v2 = normalize(pred[:, faces[:, 2]] - pred[:, faces[:, 0]], p=2, dim=2)
    v3 = normalize(pred[:, faces[:, 2]] - pred[:, faces[:, 1]], p=2, dim=2)
    g1 = normalize(gt[:, faces[:, 1]] - gt[:, faces[:, 0]], p=2, dim=2)
    g2 = normalize(gt[:, faces[:, 2]] - gt[:, faces[:, 0]], p=2, dim=2)
    normal = normalize(torch.cross(g1, g2, dim=2), p=2, dim=2)
    cosines = [torch.abs((v * normal).sum(2, keepdim=True)) for v in (v1, v2, v3)]
    return torch.cat(cosines, 1).mean()


def released_step(pred, gt, data):
    """The released loss of one body training iteration; returns each term and the total."""
    regressed = torch.einsum("jv,bvc->bjc", data["h36m"], pred["fine"])
    pelvis = regressed[:, 0][:, None]
    fine, intermediate, coarse = (pred[name] - pelvis for name in ("fine", "intermediate", "coarse"))
    mesh_joints = regressed[:, H36M_J17_TO_J14] - pelvis
    joints = pred["joints"] - ((pred["joints"][:, 2] + pred["joints"][:, 3]) / 2)[:, None]
    has_smpl, has_3d = gt["has_smpl"], gt["has_3d"]
    smpl = has_smpl == 1
    gt_levels = [gt["fine"], gt["fine"][:, data["level1"]], gt["fine"][:, data["level2"]]]
    terms = {
        "joints_3d": keypoint_3d_loss(joints, gt["joints_3d"], has_3d),
        "mesh_joints_3d": keypoint_3d_loss(mesh_joints, gt["joints_3d"], has_3d),
        "joints_2d": keypoint_2d_loss(orthographic_projection(joints, pred["camera"]), gt["joints_2d"]),
        "mesh_joints_2d": keypoint_2d_loss(orthographic_projection(mesh_joints, pred["camera"]), gt["joints_2d"]),
        "vertices": 0.25 * vertices_loss(coarse, gt_levels[2], has_smpl)
        + 0.5 * vertices_loss(intermediate, gt_levels[1], has_smpl)
        + 0.25 * vertices_loss(fine, gt_levels[0], has_smpl),
        "edge": torch.abs(
            edge_lengths(intermediate[smpl], data["edges"]) - edge_lengths(gt_levels[1][smpl], data["edges"])
        ).mean(),
        "edge_self": edge_lengths(intermediate[smpl], data["edges"]).mean(),
        "normal": normal_loss(intermediate[smpl], gt_levels[1][smpl], data["faces"]),
    }
    edge_normal = 5.0 * terms["edge"] + 1e-4 * terms["edge_self"] + 0.1 * terms["normal"]
    terms["total"] = (
        1000 * (terms["joints_3d"] + terms["mesh_joints_3d"])
        + 100 * terms["vertices"]
        + 100 * edge_normal
        + 100 * (terms["joints_2d"] + terms["mesh_joints_2d"])
    )
    return terms


@pytest.fixture(scope="module")
def case(smpl_topology, smpl_dir):
    """One batch of 3: sample 0 has everything, 1 has no 3D joints, 2 has no 2D joints and no mesh."""
    generator = torch.Generator().manual_seed(11)
    noise = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    template = torch.tensor(smpl_topology.template, dtype=torch.float32)
    h36m = torch.tensor(np.load(smpl_dir / "J_regressor_h36m_correct.npy"), dtype=torch.float32)
    level1 = torch.as_tensor(smpl_topology.level_indices(1))
    level2 = torch.as_tensor(smpl_topology.level_indices(2))
    batch = 3
    offset = torch.tensor([0.3, -0.3, 0.3])  # the raw output sits 0.3 m off the origin
    fine = template + 0.02 * noise(batch, 6890, 3) + offset
    pred = {
        "camera": torch.tensor([[0.9, 0.05, -0.1], [1.2, -0.2, 0.1], [1.0, 0.0, 0.3]]),
        "joints": torch.einsum("jv,bvc->bjc", h36m, fine)[:, H36M_J17_TO_J14] + 0.03 * noise(batch, 14, 3),
        "fine": fine,
        "intermediate": fine[:, level1] + 0.01 * noise(batch, 1723, 3),
        "coarse": fine[:, level2] + 0.01 * noise(batch, 431, 3),
    }
    gt_fine = template + 0.02 * noise(batch, 6890, 3)
    gt_fine = gt_fine - torch.einsum("v,bvc->bc", h36m[0], gt_fine)[:, None]  # pelvis-centred, as released
    visibility = (torch.rand(batch, 14, 1, generator=generator) > 0.2).float()
    visibility[2] = 0.0  # the sample without 2D labels has zero visibility
    gt = {
        "fine": gt_fine,
        "joints_3d": torch.cat([0.3 * noise(batch, 14, 3), torch.ones(batch, 14, 1)], -1),
        "joints_2d": torch.cat([noise(batch, 14, 2).clamp(-1, 1), visibility], -1),
        "has_3d": torch.tensor([1.0, 0.0, 1.0]),
        "has_2d": torch.tensor([1.0, 1.0, 0.0]),
        "has_smpl": torch.tensor([1.0, 1.0, 0.0]),
    }
    data = {
        "h36m": h36m,
        "level1": level1,
        "level2": level2,
        "faces": torch.as_tensor(np.load(smpl_dir / "smpl_1723_faces.npy").astype(np.int64)),
        "edges": torch.as_tensor(np.load(smpl_dir / "smpl_1723_edges.npy").astype(np.int64)),
    }
    return pred, gt, data


def ours(pred, gt, topology):
    outputs = {
        "camera": pred["camera"],
        "joints": pred["joints"],
        "vertices_by_level": (pred["fine"], pred["intermediate"], pred["coarse"]),
    }
    batch = {
        "joints_3d": gt["joints_3d"],
        "joints_2d": gt["joints_2d"],
        "vertices": gt["fine"],
        "has_joints_3d": gt["has_3d"],
        "has_joints_2d": gt["has_2d"],
        "has_vertices": gt["has_smpl"],
    }
    return MeshCriterion(topology)(outputs, batch)


def test_every_term_equals_the_released_training_step(case, smpl_topology):
    pred, gt, data = case
    released = released_step(pred, gt, data)
    terms = ours(pred, gt, smpl_topology)
    for name, value in released.items():
        assert value.item() > 0, name
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_the_raw_offset_does_not_matter(case, smpl_topology):
    pred, gt, data = case
    moved = {
        **pred,
        **{name: pred[name] + torch.tensor([-0.5, 0.2, 1.0]) for name in ("joints", "fine", "intermediate", "coarse")},
    }
    released, terms = released_step(moved, gt, data), ours(moved, gt, smpl_topology)
    for name in ("joints_2d", "mesh_joints_2d", "total"):
        assert terms[name].item() == pytest.approx(released[name].item(), rel=1e-5), name
