"""Anny parameters for a predicted Anny-topology mesh: a learned start, then a batched refinement.

:class:`AnnyFitter` turns predicted level-0 vertices (B, V0, 3) (camera frame, metres, any
translation) into Anny's phenotypes, the :data:`~fastmetro.rig.anny_body.FIT_BONES` rotations
and a rigid placement:

1. start: :func:`~fastmetro.rig.anny_init.initial_guess` (the shipped network, or the mean body
   at rest registered on the torso);
2. refinement: Adam on the mean vertex distance to the prediction plus a light prior that keeps
   each bone near its start (``prior`` x the squared residual angle, radians) and the phenotypes
   inside [0, 1] (a sigmoid);
3. detail (``detail=True``, the default): rest-mesh offsets, SMPL+D style (:func:`rest_offsets`),
   for what the 11 phenotypes and the fitted bones cannot reach; the rig carries them in its mesh.

Rows with the same ``groups`` id share one body, phenotypes and offsets (one person in a video);
every row has its own pose and placement. The fit error (mean vertex distance to the prediction,
mm) is returned per row, with offsets and without them (``pose_error_mm``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources

import numpy as np
import roma
import torch

from fastmetro.data.synthetic.body import PHENOTYPE_LABELS
from fastmetro.errors import FastMetroError
from fastmetro.rig.anny_body import AnnyPoser, PosedAnny
from fastmetro.rig.anny_init import INPUT_LEVEL, AnnyInit, CanonicalFrame, initial_guess, load_init
from fastmetro.rig.motion import Motion

SHIPPED_INIT = "anny_fit_init.safetensors"


@dataclass
class AnnyFit:
    """A fit of B rows (torch tensors on the fitter's device; camera frame, metres).

    phenotypes (B, 11) in [0, 1]; rotations (B, N, 3, 3) local-ref deltas of FIT_BONES;
    global_rotation (B, 3, 3) and translation (B, 3): Anny's frame -> camera; posed: the fitted
    meshes and bone poses; error_mm (B,) mean vertex distance to the target; start_error_mm (B,)
    the same for the start; seconds: wall time of the whole fit; offsets (B or 1, 13718, 3) the
    rest-mesh offsets (metres; None without them) and pose_error_mm (B,) the error before them
    (phenotypes, pose and placement alone).
    """

    phenotypes: torch.Tensor
    rotations: torch.Tensor
    global_rotation: torch.Tensor
    translation: torch.Tensor
    posed: PosedAnny
    error_mm: np.ndarray
    start_error_mm: np.ndarray
    seconds: float
    offsets: torch.Tensor | None = None
    pose_error_mm: np.ndarray | None = None

    def parameters(self, row: int, bone_names) -> dict:
        """JSON-ready parameters of one row (axis-angle radians, metres)."""
        as_list = lambda tensor, digits=6: np.round(tensor.detach().cpu().double().numpy(), digits).tolist()  # noqa: E731
        return {
            "body_model": "anny",
            "phenotypes": dict(zip(PHENOTYPE_LABELS, as_list(self.phenotypes[row]))),
            "pose_parameterization": "local-ref (Anny's default): rotations in the rest pose's world-aligned axes",
            "bone_rotations_axis_angle": dict(zip(bone_names, as_list(roma.rotmat_to_rotvec(self.rotations[row])))),
            "global_rotation": as_list(self.global_rotation[row]),
            "translation": as_list(self.translation[row]),
            "frame": "Anny's frame (x left, y back, z up) -> camera (OpenCV: x right, y down, z forward), metres",
            "fit_error_mm": round(float(self.error_mm[row]), 3),
            **({} if self.pose_error_mm is None else {"pose_fit_error_mm": round(float(self.pose_error_mm[row]), 3)}),
            **({} if self.offsets is None else {"rest_offsets_mean_mm": self._offsets_mm(row)}),
        }

    def _offsets_mm(self, row: int) -> float:
        assert self.offsets is not None
        offsets = self.offsets[row if len(self.offsets) > 1 else 0]
        return round(float(offsets.norm(dim=-1).mean()) * 1000, 3)


def _mean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) x2 -> (B,) mean Euclidean vertex distance."""
    return (a - b).norm(dim=-1).mean(-1)


def _phenotype_logits(start: torch.Tensor, groups, known) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, 11) phenotype logits to optimise (or fixed, for a ``known`` shape) and each row's group.

    start (B, 11): the rows' guesses; a group starts at the mean of its rows' guesses. Logits keep
    the phenotypes inside [0, 1]; a guess is clamped to [0.02, 0.98] so its gradient is not lost.
    """
    batch, device = len(start), start.device
    if known is not None:  # a known shape: one fixed group per row, kept as given
        shape = torch.as_tensor(known, dtype=torch.float32, device=device).expand(batch, -1)
        return torch.logit(shape.clamp(1e-6, 1 - 1e-6)), torch.arange(batch, device=device)
    group_ids = torch.arange(batch) if groups is None else torch.as_tensor(np.asarray(groups))
    if group_ids.shape != (batch,):
        raise FastMetroError(f"anny fit: groups of shape {tuple(group_ids.shape)}, expected ({batch},)")
    group_index = torch.unique(group_ids, return_inverse=True)[1].to(device)
    count = int(group_index.max()) + 1
    means = torch.zeros(count, start.shape[1], device=device).index_add_(0, group_index, start)
    means /= torch.bincount(group_index, minlength=count)[:, None]
    return torch.logit(means.clamp(0.02, 0.98)).requires_grad_(True), group_index


#: Rounds of neighbour averaging of the rest-mesh offsets (:func:`rest_offsets`).
OFFSET_SMOOTHING = 5  # chosen on synthetic held-out predictions (docs/animation.md)
#: Damping of the per-vertex solve (a vertex whose bones' rotations nearly cancel gets no offset
#: out of proportion).
OFFSET_DAMPING = 1e-2


def rest_offsets(
    poser: AnnyPoser, phenotypes, rotations, global_rotation, posed: PosedAnny, targets, smoothing: int | None = None
) -> torch.Tensor:
    """(B, 13718, 3) metres: rest-mesh displacements that, skinned by the fitted pose, carry the
    fitted label vertices onto ``targets`` (B, V0, 3), SMPL+D style (the body's own detail that
    Anny's 11 phenotypes cannot give, and what of the pose the fitted bones cannot reach).

    Skinning is linear in the rest mesh, so each label vertex's offset solves a 3x3 system
    (damped); Anny's other vertices (eyes, teeth, tongue) take the offset of the nearest label
    vertex of the rest mesh; ``smoothing`` rounds of neighbour averaging (half each round) then
    take out what would fold the surface. The rig carries them in its mesh, so an animation moves
    them with the skin."""
    maps = poser.offset_maps(phenotypes, rotations, global_rotation)[:, poser.label_indices]  # (B, V0, 3, 3)
    wanted = (targets - posed.label_vertices)[..., None]
    normal = maps.transpose(-1, -2) @ maps + OFFSET_DAMPING * torch.eye(3, device=maps.device)
    label_offsets = torch.linalg.solve(normal, maps.transpose(-1, -2) @ wanted)[..., 0]
    offsets = label_offsets[:, poser.nearest_label]
    for _ in range(OFFSET_SMOOTHING if smoothing is None else smoothing):
        offsets = 0.5 * offsets + 0.5 * torch.stack([poser.neighbour_mean @ row for row in offsets])
    return offsets


def _group_mean(values: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, ...): each row replaced by the mean of its group's rows."""
    count = int(group_index.max()) + 1
    sums = values.new_zeros((count, *values.shape[1:])).index_add_(0, group_index, values)
    sizes = torch.bincount(group_index, minlength=count).to(values.dtype)
    return (sums / sizes.view(-1, *[1] * (values.dim() - 1)))[group_index]


class AnnyFitter:
    """Fits Anny to predicted meshes of an Anny topology (see the module docstring)."""

    def __init__(self, topology=None, device: str | torch.device = "cpu", init: str | None = "shipped"):
        self.poser = AnnyPoser(topology, device)
        self.frame = CanonicalFrame(self.poser)
        self.input_indices = torch.as_tensor(self.poser.topology.level_indices(INPUT_LEVEL), device=self.poser.device)
        self.network: AnnyInit | None = None
        if init is not None:
            path = resources.files("fastmetro.weights") / SHIPPED_INIT if init == "shipped" else init
            self.network = load_init(path, 3 * len(self.input_indices)).to(self.poser.device)

    def fit(
        self,
        targets,
        groups=None,
        steps: int = 60,
        lr: float = 0.02,
        prior: float = 1e-3,
        phenotypes=None,
        detail: bool = True,
        offsets: torch.Tensor | None = None,
    ) -> AnnyFit:
        """Fit targets (B, V0, 3) metres (numpy or torch).

        ``groups`` (B,) ints: rows of one group share a body: phenotypes and rest-mesh offsets
        (default: every row its own).

        ``phenotypes`` (1, 11) or (B, 11): a known body shape, kept fixed (a track's later frames).

        ``detail``: after the pose, rest-mesh offsets (:func:`rest_offsets`) carry the fitted body
        onto the prediction; ``offsets`` (1 or B, 13718, 3): known ones, used as given (a track's).
        """
        started = time.perf_counter()
        poser = self.poser
        targets = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=poser.device)
        if targets.dim() != 3 or targets.shape[1:] != (len(poser.label_indices), 3):
            raise FastMetroError(
                f"anny fit: targets of shape {tuple(targets.shape)}, expected (B, {len(poser.label_indices)}, 3)"
            )
        if not torch.isfinite(targets).all():
            raise FastMetroError("anny fit: the predicted vertices hold NaN or infinite values")
        batch = len(targets)
        with torch.no_grad():
            start = initial_guess(self.network, self.frame, self.input_indices, targets)
        logits, group_index = _phenotype_logits(start.phenotypes, groups, phenotypes)
        bone_residual = torch.zeros(batch, poser.num_fit_bones, 3, device=poser.device, requires_grad=True)
        global_residual = torch.zeros(batch, 3, device=poser.device, requires_grad=True)
        translation = torch.zeros(batch, 3, device=poser.device, requires_grad=True)

        def evaluate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PosedAnny]:
            rotations = start.rotations @ roma.rotvec_to_rotmat(bone_residual)
            global_rotation = start.global_rotation @ roma.rotvec_to_rotmat(global_residual)
            posed = poser(torch.sigmoid(logits)[group_index], rotations, global_rotation, translation)
            return rotations, global_rotation, _mean_distance(posed.label_vertices, targets), posed

        with torch.no_grad():  # the placement's translation in closed form: centroids agree
            _, _, _, posed = evaluate()
            shift = (targets - posed.label_vertices).mean(1)
            translation += shift
            start_error = _mean_distance(posed.label_vertices + shift[:, None], targets)
        variables = [bone_residual, global_residual, translation] + ([logits] if phenotypes is None else [])
        optimiser = torch.optim.Adam(variables, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
        for _ in range(steps):
            optimiser.zero_grad()
            _, _, distance, _ = evaluate()
            loss = distance.sum() + prior * bone_residual.square().sum()
            loss.backward()
            optimiser.step()
            schedule.step()
        with torch.no_grad():
            rotations, global_rotation, distance, posed = evaluate()
            shapes = torch.sigmoid(logits.detach())[group_index]
            pose_error = distance
            if offsets is None and detail:  # rows of one group share their body: its offsets too
                own = rest_offsets(poser, shapes, rotations, global_rotation, posed, targets)
                offsets = _group_mean(own, group_index)
            if offsets is not None:
                posed = poser(shapes, rotations, global_rotation, translation, offsets=offsets)
                distance = _mean_distance(posed.label_vertices, targets)
        return AnnyFit(
            phenotypes=shapes,
            rotations=rotations,
            global_rotation=global_rotation,
            translation=translation.detach(),
            posed=posed,
            error_mm=distance.cpu().numpy() * 1000.0,
            start_error_mm=start_error.cpu().numpy() * 1000.0,
            seconds=time.perf_counter() - started,
            offsets=offsets,
            pose_error_mm=pose_error.cpu().numpy() * 1000.0,
        )

    def motion(self, fit: AnnyFit, rows, fps: float = 30.0, name: str = "person_00") -> Motion:
        """The rig and motion of ``rows`` of ``fit`` (one person; the rows share a body)."""
        return self.poser.motion(fit.posed, fit.global_rotation, fit.translation, rows, fps=fps, name=name)
