"""Evaluation loop: per-sample metrics gathered across processes, then averaged over samples.

Protocol (released ``run_validate``, see :mod:`fastmetro.metrics`): joints regressed from the
predicted fine mesh; MPJPE/PA-MPJPE over samples with ground-truth 3D joints; MPVPE/PA-MPVPE
over samples with a ground-truth mesh; F-scores at 5/15 mm for hand topologies. Not in the
release: the predicted fine mesh's surface roughness over every sample (``dihedral``, ``folded``;
:func:`fastmetro.metrics.surface_metrics`) and the ground truth's (``gt_dihedral``), so a fold
that vertex errors hide shows in every evaluation.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastmetro import metrics
from fastmetro.data.loader import SafeLoader, create_loader
from fastmetro.engine.distributed import DistInfo, EvalSampler, all_gather_rows

if TYPE_CHECKING:
    from fastmetro.topology import Topology

JOINT_METRICS = ("mpjpe", "pa_mpjpe")
MESH_METRICS = ("mpvpe", "pa_mpvpe")
SURFACE_METRICS = ("dihedral", "folded")  # of the prediction: defined for every sample
HAND_FSCORE_THRESHOLDS_MM = (5.0, 15.0)


@dataclass
class EvalSetup:
    """What the evaluation loop needs besides the model and data."""

    topology: Topology
    device: torch.device = torch.device("cpu")
    autocast_dtype: torch.dtype | None = None  # None = full precision
    hand_metrics: bool | None = None  # None = auto (hand topologies)
    progress: bool = True
    dist: DistInfo = DistInfo()


def eval_loader(dataset, batch_size: int, num_workers: int, dist: DistInfo) -> SafeLoader:
    """A loader where each process sees a disjoint share of the samples (no padding)."""
    return create_loader(
        dataset,
        batch_size=batch_size,
        sampler=EvalSampler(len(dataset), dist.rank, dist.world_size),
        num_workers=num_workers,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=False,  # made anew for every evaluation
        seed=0,  # leave the global RNG alone (exact resume)
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, setup: EvalSetup) -> dict[str, float]:
    """Run ``model`` over ``loader`` and return averaged metrics (mm; F-scores in [0, 1]).

    Returns keys ``mpjpe``, ``pa_mpjpe`` (if any sample has 3D joints), ``mpvpe``, ``pa_mpvpe``
    (if any has a mesh), ``f@5mm``/``f@15mm`` (hands), and ``num_samples``, ``num_joint_samples``,
    ``num_mesh_samples`` over all processes; ``dihedral`` (degrees) and ``folded`` (share) of the
    predicted fine mesh over every sample, ``gt_dihedral`` over the samples with a mesh.
    """
    topology = setup.topology
    faces = topology.faces[0]
    pairs = metrics.face_pairs(faces) if len(faces) else None
    hand = topology.is_hand if setup.hand_metrics is None else setup.hand_metrics
    thresholds = HAND_FSCORE_THRESHOLDS_MM if hand else ()
    was_training = model.training
    model.eval()
    names: list[str] | None = None
    rows = []
    iterator = loader
    if setup.progress and setup.dist.is_main and sys.stderr.isatty():
        from tqdm import tqdm

        iterator = tqdm(loader, desc="eval", unit="batch", leave=False, dynamic_ncols=True)
    for batch in iterator:
        images = batch["image"].to(setup.device, non_blocking=True)
        with _autocast(setup.device, setup.autocast_dtype):
            outputs = model(images)
        per_sample = metrics.per_sample_metrics(
            outputs["fine_vertices"].float(),
            batch["joints_3d"][..., :3],
            batch["vertices"],
            topology.joint_regressor,
            topology.root_regressor,
            topology.root_joints,
            fscore_thresholds_mm=thresholds,
        )
        if pairs is not None:
            per_sample.update(metrics.surface_metrics(outputs["fine_vertices"], faces, pairs))
            per_sample["gt_dihedral"] = metrics.mean_dihedral_angle(batch["vertices"], faces, pairs)
        names = list(per_sample)
        # One row per sample: availability flags, then every metric (gathered as one tensor).
        rows.append(
            torch.stack(
                [batch["has_joints_3d"].float().reshape(-1), batch["has_vertices"].float().reshape(-1)]
                + [per_sample[name] for name in names],
                dim=1,
            ).double()
        )
    if was_training:
        model.train()
    if names is None:  # no batch here: the same columns as the processes that had one
        names = list(JOINT_METRICS + MESH_METRICS) + [f"f@{t:g}mm" for t in thresholds]
        names += list(SURFACE_METRICS) + ["gt_dihedral"] if pairs is not None else []
    local = torch.cat(rows) if rows else torch.zeros(0, 2 + len(names), dtype=torch.float64)
    gather_device = setup.device if setup.dist.enabled and setup.device.type == "cuda" else torch.device("cpu")
    table = all_gather_rows(local.to(gather_device)).cpu()
    return summarise(table, names)


def summarise(table: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Mean of each metric over the samples where it is defined; ``table`` = (N, 2 + M)."""
    has_joints = table[:, 0] > 0.5
    has_mesh = table[:, 1] > 0.5
    out: dict[str, float] = {
        "num_samples": int(table.shape[0]),
        "num_joint_samples": int(has_joints.sum()),
        "num_mesh_samples": int(has_mesh.sum()),
    }
    for column, name in enumerate(names, start=2):
        mask = has_joints if name in JOINT_METRICS else has_mesh
        if name in SURFACE_METRICS:
            mask = torch.ones_like(has_mesh)
        if mask.any():
            out[name] = float(table[mask, column].mean())
    return out


def format_metrics(values: dict[str, float]) -> str:
    """One line: ``MPJPE 61.2 mm | PA-MPJPE 40.1 mm | ...``."""
    labels = {"mpjpe": "MPJPE", "pa_mpjpe": "PA-MPJPE", "mpvpe": "MPVPE", "pa_mpvpe": "PA-MPVPE"}
    parts = []
    for key, label in labels.items():
        if key in values and not math.isnan(values[key]):
            parts.append(f"{label} {values[key]:.1f} mm")
    for key in sorted(k for k in values if k.startswith("f@")):
        parts.append(f"F{key[1:]} {values[key]:.3f}")
    if "dihedral" in values:
        ratio = f" ({values['dihedral'] / values['gt_dihedral']:.2f}x GT)" if values.get("gt_dihedral") else ""
        parts.append(f"dihedral {values['dihedral']:.1f} deg{ratio}, {100 * values['folded']:.1f}% folded")
    parts.append(f"({values.get('num_samples', 0)} samples)")
    return " | ".join(parts)


def find_run_config(checkpoint: str | os.PathLike):
    """The path of the training config saved beside a checkpoint by ``fastmetro train`` (None if absent)."""
    from pathlib import Path

    for folder in (Path(checkpoint).parent, Path(checkpoint).parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            return candidate
    return None
