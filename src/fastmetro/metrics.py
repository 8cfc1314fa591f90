"""Mesh-recovery metrics, following the released FastMETRO evaluation protocol.

Every function takes coordinates in **metres** and returns **per-sample** errors in
**millimetres** (shape ``(B,)``), so callers can mask, gather across processes and average
over samples themselves (the mean over samples, not a mean of batch means).

Protocol (released ``run_validate``): predicted joints are regressed from the predicted *fine*
mesh; predicted and ground-truth joints are both re-centred on the root joints (body: mid-hip,
hand: wrist) before MPJPE; PA-* metrics align each prediction to its ground truth with a
similarity transform (scale, rotation, translation) found by Procrustes analysis; MPVPE compares
root-centred meshes; the F-score (FreiHAND) is computed on Procrustes-aligned vertices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fastmetro.conventions import centre_joints, centre_mesh

MILLIMETRES_PER_METRE = 1000.0


def procrustes_align(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Align ``source`` to ``target`` per sample with the best similarity transform.

    Solves ``min_{s, R, t} ||s R x + t - y||^2`` with ``R`` a proper rotation (det +1: a
    reflection is never used, so a mirrored shape is *not* aligned perfectly).

    Args:
        source: (B, N, 3) points to move.
        target: (B, N, 3) corresponding points.
    Returns:
        (B, N, 3) aligned source, in the dtype of ``source`` (computed in float64).
    """
    dtype = source.dtype
    x = source.double()
    y = target.double()
    mean_x = x.mean(dim=1, keepdim=True)
    mean_y = y.mean(dim=1, keepdim=True)
    x0 = x - mean_x
    y0 = y - mean_y
    variance_x = (x0**2).sum(dim=(1, 2))
    covariance = x0.transpose(1, 2) @ y0  # (B, 3, 3) = sum_i x_i y_i^T
    u, _, vh = torch.linalg.svd(covariance)
    # Flip the last singular direction if the optimal orthogonal map would be a reflection.
    sign = torch.sign(torch.linalg.det(u @ vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    correction = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], dim=-1))
    rotation = vh.transpose(1, 2) @ correction @ u.transpose(1, 2)  # y ~ R x
    scale = torch.einsum("bij,bji->b", rotation, covariance) / variance_x.clamp_min(1e-12)
    aligned = scale[:, None, None] * (x0 @ rotation.transpose(1, 2)) + mean_y
    return aligned.to(dtype)


def mean_point_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance over points, (B, N, 3) metres -> (B,) millimetres."""
    return (pred.double() - target.double()).norm(dim=-1).mean(dim=-1).float() * MILLIMETRES_PER_METRE


def mpjpe(pred_joints: torch.Tensor, gt_joints: torch.Tensor, root_joints: Sequence[int]) -> torch.Tensor:
    """Root-aligned mean per-joint position error: (B, K, 3) metres -> (B,) mm."""
    return mean_point_error(centre_joints(pred_joints, root_joints), centre_joints(gt_joints, root_joints))


def pa_mpjpe(pred_joints: torch.Tensor, gt_joints: torch.Tensor) -> torch.Tensor:
    """MPJPE after per-sample similarity Procrustes alignment: (B, K, 3) metres -> (B,) mm."""
    return mean_point_error(procrustes_align(pred_joints, gt_joints), gt_joints)


def mpvpe(pred_vertices: torch.Tensor, gt_vertices: torch.Tensor) -> torch.Tensor:
    """Mean per-vertex position error of meshes already centred on their roots: (B, V, 3) m -> (B,) mm."""
    return mean_point_error(pred_vertices, gt_vertices)


def pa_mpvpe(pred_vertices: torch.Tensor, gt_vertices: torch.Tensor) -> torch.Tensor:
    """MPVPE after per-sample Procrustes alignment of the vertices: (B, V, 3) m -> (B,) mm."""
    return mean_point_error(procrustes_align(pred_vertices, gt_vertices), gt_vertices)


def _nearest_distances(source: torch.Tensor, target: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each point of ``source`` (N, 3), the distance to its nearest point in ``target`` (M, 3)."""
    out = []
    for start in range(0, source.shape[0], chunk):
        out.append(torch.cdist(source[start : start + chunk], target).min(dim=1).values)
    return torch.cat(out)


def f_score(
    pred_vertices: torch.Tensor, gt_vertices: torch.Tensor, thresholds_mm: Sequence[float] = (5.0, 15.0)
) -> torch.Tensor:
    """FreiHAND F-score of Procrustes-aligned point sets at distance thresholds.

    Precision = fraction of predicted points within the threshold of *some* ground-truth
    point, recall = the converse; F = 2PR / (P + R) (0 when both are 0).

    Args:
        pred_vertices, gt_vertices: (B, V, 3) metres.
        thresholds_mm: distance thresholds in millimetres.
    Returns:
        (B, len(thresholds_mm)) F-scores in [0, 1].
    """
    aligned = procrustes_align(pred_vertices, gt_vertices).double()
    gt = gt_vertices.double()
    scores = torch.zeros(pred_vertices.shape[0], len(thresholds_mm), dtype=torch.float64)
    for sample in range(pred_vertices.shape[0]):
        pred_to_gt = _nearest_distances(aligned[sample], gt[sample]) * MILLIMETRES_PER_METRE
        gt_to_pred = _nearest_distances(gt[sample], aligned[sample]) * MILLIMETRES_PER_METRE
        for column, threshold in enumerate(thresholds_mm):
            precision = (pred_to_gt < threshold).double().mean()
            recall = (gt_to_pred < threshold).double().mean()
            total = precision + recall
            scores[sample, column] = torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-12), 0.0)
    return scores.float()


def regress_joints(joint_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Joints from a mesh: (K, V) @ (B, V, 3) -> (B, K, 3)."""
    return torch.einsum("kv,bvc->bkc", joint_regressor.to(vertices.dtype), vertices)


METRIC_NAMES = ("mpjpe", "pa_mpjpe", "mpvpe", "pa_mpvpe")


def as_float_tensor(array) -> torch.Tensor:
    """A float32 CPU tensor copy of a numpy array or tensor (topology arrays are read-only)."""
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu()
    return torch.from_numpy(np.array(array, dtype=np.float32))


def per_sample_metrics(
    pred_fine_vertices: torch.Tensor,
    gt_joints: torch.Tensor,
    gt_vertices: torch.Tensor,
    joint_regressor: torch.Tensor | np.ndarray,
    root_regressor: torch.Tensor | np.ndarray,
    root_joints: Sequence[int],
    fscore_thresholds_mm: Sequence[float] = (),
) -> dict[str, torch.Tensor]:
    """All metrics of one batch, per sample (millimetres; F-scores unitless).

    Args:
        pred_fine_vertices: (B, V0, 3) predicted full mesh, metres (any translation).
        gt_joints: (B, K, 3) ground-truth joints, metres.
        gt_vertices: (B, V0, 3) ground-truth mesh, metres.
        joint_regressor: (K, V0); root_regressor: (V0,); root_joints: joint indices of the root.
        fscore_thresholds_mm: if given, adds ``f@{t}mm`` for each threshold (hand protocol).
    Returns:
        ``mpjpe``, ``pa_mpjpe`` (use where joints are available), ``mpvpe``, ``pa_mpvpe`` (where
        the mesh is available), each (B,) float32 on the CPU; plus ``f@5mm`` etc.
    """
    pred = pred_fine_vertices.detach().float().cpu()
    gt_joints = gt_joints.detach().float().cpu()
    gt_vertices = gt_vertices.detach().float().cpu()
    regressor = as_float_tensor(joint_regressor)
    root = as_float_tensor(root_regressor)
    pred_joints = regress_joints(regressor, pred)
    pred_mesh = centre_mesh(pred, root)
    gt_mesh = centre_mesh(gt_vertices, root)
    out = {
        "mpjpe": mpjpe(pred_joints, gt_joints, root_joints),
        "pa_mpjpe": pa_mpjpe(pred_joints, gt_joints),
        "mpvpe": mpvpe(pred_mesh, gt_mesh),
        "pa_mpvpe": pa_mpvpe(pred_mesh, gt_mesh),
    }
    if fscore_thresholds_mm:
        scores = f_score(pred_mesh, gt_mesh, fscore_thresholds_mm)
        for column, threshold in enumerate(fscore_thresholds_mm):
            out[f"f@{threshold:g}mm"] = scores[:, column]
    return out


def face_pairs(faces: np.ndarray) -> np.ndarray:
    """(P, 2) indices of the faces that share an edge (trimesh's face adjacency)."""
    import trimesh  # only the smoothness metric needs it

    return np.asarray(trimesh.graph.face_adjacency(np.asarray(faces, dtype=np.int64)), dtype=np.int64)


def dihedral_angles(vertices: torch.Tensor, faces: np.ndarray, pairs: np.ndarray | None = None) -> torch.Tensor:
    """(B, P) angles in **degrees** between the normals of the faces of each pair that shares an
    edge. Degenerate faces (zero area) count as their neighbours' direction (their normal is taken
    as 0).

    Args:
        vertices: (B, V, 3) metres (any scale: the angle does not depend on it).
        faces: (F, 3) triangles; pairs: ``face_pairs(faces)``, computed when not given.
    """
    pairs = face_pairs(faces) if pairs is None else pairs
    points = vertices.detach().float().cpu()
    tri = torch.from_numpy(np.array(faces, dtype=np.int64))
    a, b, c = points[:, tri[:, 0]], points[:, tri[:, 1]], points[:, tri[:, 2]]
    normals = torch.nn.functional.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1)
    first, second = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    cosine = (normals[:, first] * normals[:, second]).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


def mean_dihedral_angle(vertices: torch.Tensor, faces: np.ndarray, pairs: np.ndarray | None = None) -> torch.Tensor:
    """Surface roughness: the mean of :func:`dihedral_angles` per sample (B,), degrees. A smooth
    body is ~10 degrees; a spiky one much more."""
    return dihedral_angles(vertices, faces, pairs).mean(dim=1)


FOLD_DEGREES = 60.0  # a face pair bent past this is a fold, not the body's curvature


def surface_metrics(
    vertices: torch.Tensor, faces: np.ndarray, pairs: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample surface roughness of (B, V, 3) meshes: ``dihedral`` (mean angle between
    neighbouring faces' normals, degrees) and ``folded`` (share of face pairs bent past
    :data:`FOLD_DEGREES`, in [0, 1]). Both are (B,); neither needs a ground truth."""
    angles = dihedral_angles(vertices, faces, pairs)
    return {"dihedral": angles.mean(dim=1), "folded": (angles > FOLD_DEGREES).float().mean(dim=1)}
