"""Animatable results: body-model parameters fitted to predictions, written as rigged glb + BVH.

:class:`Rigger` picks the fitter from the model's topology:

* an Anny topology (the default model's): :class:`~fastmetro.rig.anny_fit.AnnyFitter`, no file needed;
* ``smpl`` with the user's SMPL file (``body_model``): :func:`~fastmetro.rig.smpl_fit.fit_smpl`,
  started from the released SMPL-parameter regressor's output where the checkpoint has one.

Files: a photo's person ``person_XX_rig.glb`` (skeleton, skin weights, inverse bind matrices, the
fitted pose as joint rotations), ``person_XX.bvh`` and ``person_XX_rig.json`` (the parameters and
the fit error); a video's track ``track_XX/rig.glb`` (one keyframe per frame), ``track_XX/motion.bvh``,
``track_XX/rig.json`` and ``tracks_rig.glb`` with every track, one animation each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fastmetro.data.body_models import load_body_model
from fastmetro.errors import FastMetroError
from fastmetro.io import write_bytes
from fastmetro.rig.anny_body import FIT_BONES
from fastmetro.rig.anny_fit import AnnyFitter
from fastmetro.rig.bvh import write_bvh
from fastmetro.rig.gltf import write_rigged_glb
from fastmetro.rig.motion import Motion
from fastmetro.rig.smpl_fit import SmplFit, fit_smpl, smpl_motion

if TYPE_CHECKING:
    from fastmetro.inference.predictor import ImagePrediction, PersonPrediction
    from fastmetro.inference.video import VideoTracks

#: Rows fitted in one batch (memory: Anny's skinning of 13,718 vertices per row, with gradients).
CHUNK = 32
#: Frames of a track fitted together to find its one body shape.
SHAPE_FRAMES = 32


def _is_anny(topology) -> bool:
    return getattr(topology, "source_vertex_indices", None) is not None and not topology.is_hand


class Rigger:
    """Fits body-model parameters to a predictor's people (see the module docstring).

    Args:
        topology: the predictor's :class:`~fastmetro.topology.Topology`.
        body_model: an SMPL model file or a loaded :class:`~fastmetro.data.body_models.BodyModel`
            (SMPL-topology models); ignored for Anny topologies.
        steps: refinement steps. device: where the fit runs.
    """

    def __init__(self, topology, body_model=None, steps: int | None = None, device: str = "cpu"):
        self.topology = topology
        self.kind = "anny" if _is_anny(topology) else topology.name
        if self.kind == "anny":
            self.fitter = AnnyFitter(topology, device=device)
            self.steps = 60 if steps is None else steps
        elif self.kind in ("smpl", "mano") and body_model is not None:
            self.body_model = load_body_model(body_model) if isinstance(body_model, (str, Path)) else body_model
            if self.body_model.num_vertices != topology.num_vertices:
                raise FastMetroError(
                    f"rig: the body model has {self.body_model.num_vertices} vertices, "
                    f"the {topology.name} topology {topology.num_vertices}"
                )
            self.steps = 100 if steps is None else steps  # a cap: Levenberg-Marquardt stops when settled
        else:
            needs = "an SMPL/MANO model file (--body-model)" if self.kind in ("smpl", "mano") else "an Anny topology"
            raise FastMetroError(f"rig: the {topology.name} topology needs {needs} to fit body-model parameters")

    # ----------------------------------------------------------------- fitting
    def fit_people(self, people: list[PersonPrediction], names: list[str], fps: float = 30.0):
        """One photo's people -> [(Motion, parameters dict)], fitted together (batches of CHUNK)."""
        if not people:
            return []
        targets = np.stack([person.vertices_camera for person in people])
        if self.kind == "anny":
            results = []
            for start in range(0, len(people), CHUNK):
                fit = self.fitter.fit(targets[start : start + CHUNK], steps=self.steps)
                for row in range(len(fit.error_mm)):
                    motion = self.fitter.motion(fit, [row], fps=fps, name=names[start + row])
                    results.append((motion, fit.parameters(row, FIT_BONES)))
            return results
        return self._fit_smpl(people, targets, names, fps)

    def _fit_smpl(self, people, targets, names, fps):
        rotmat = [person.smpl_rotmat for person in people]
        betas = [person.smpl_betas for person in people]
        has_start = all(r is not None for r in rotmat) and self.kind == "smpl"
        fit = fit_smpl(
            self.body_model,
            targets,
            init_rotmat=np.stack(rotmat) if has_start else None,
            init_betas=np.stack(betas) if has_start else None,
            steps=self.steps,
        )
        results = []
        for row in range(len(people)):
            motion = smpl_motion(self.body_model, fit, [row], None, fps, names[row])
            params = {
                "body_model": self.kind,
                "pose_axis_angle": np.asarray(fit.pose[row]).round(6).tolist(),
                "betas": np.asarray(fit.betas[row]).round(6).tolist(),
                "translation": np.asarray(fit.translation[row]).round(6).tolist(),
                "start": "the SMPL parameter regressor" if has_start else "mean pose, rigid registration",
                "fit_error_mm": round(float(fit.error_mm[row]), 3),
            }
            results.append((motion, params))
        return results

    def fit_track(self, targets: np.ndarray, fps: float, name: str) -> tuple[Motion, dict]:
        """One track's frames (T, V0, 3) camera frame -> its Motion (one body shape) and parameters."""
        if self.kind != "anny":
            return self._fit_smpl_track(targets, fps, name)
        fitter = self.fitter
        shape_rows = np.linspace(0, len(targets) - 1, min(SHAPE_FRAMES, len(targets))).round().astype(int)
        body = fitter.fit(targets[shape_rows], groups=np.zeros(len(shape_rows)), steps=self.steps)
        # One body for the whole track: its phenotypes and its rest-mesh offsets (one group: their
        # mean over the shape frames, where each frame's own pose residual mostly cancels).
        shape, offsets = body.phenotypes[:1], None if body.offsets is None else body.offsets[:1]
        poses, errors, frames = [], [], []
        for start in range(0, len(targets), CHUNK):
            fit = fitter.fit(targets[start : start + CHUNK], steps=self.steps, phenotypes=shape, offsets=offsets)
            rows = list(range(len(fit.error_mm)))
            frames.append(fitter.motion(fit, rows, fps=fps, name=name))
            errors.append(fit.error_mm)
            poses += [fit.parameters(row, FIT_BONES) for row in rows]
        first = frames[0]
        motion = Motion(
            first.rig,
            np.concatenate([m.bone_poses for m in frames]),
            np.concatenate([m.placement for m in frames]),
            fps=fps,
            name=name,
        )
        error = np.concatenate(errors)
        record = {
            "body_model": "anny",
            "phenotypes": poses[0]["phenotypes"],
            "frames": [
                {key: p[key] for key in ("bone_rotations_axis_angle", "global_rotation", "translation", "fit_error_mm")}
                for p in poses
            ],
            "fit_error_mm": {"mean": round(float(error.mean()), 3), "max": round(float(error.max()), 3)},
        }
        if offsets is not None:  # in the rig's mesh
            record["rest_offsets_mean_mm"] = round(float(offsets.norm(dim=-1).mean()) * 1000, 3)
        return motion, record

    def _fit_smpl_track(self, targets: np.ndarray, fps: float, name: str) -> tuple[Motion, dict]:
        """SMPL/MANO: every frame fitted (in chunks), the rig at the frames' mean betas."""
        fits = [
            fit_smpl(self.body_model, targets[s : s + CHUNK], steps=self.steps) for s in range(0, len(targets), CHUNK)
        ]
        joined = {key: np.concatenate([getattr(f, key) for f in fits]) for key in ("pose", "betas", "translation")}
        fit = SmplFit(
            **joined,
            vertices=np.concatenate([f.vertices for f in fits]),
            error_mm=np.concatenate([f.error_mm for f in fits]),
            steps=max(f.steps for f in fits),
        )
        motion = smpl_motion(self.body_model, fit, list(range(len(targets))), None, fps, name)
        record = {
            "body_model": self.kind,
            "betas": fit.betas.mean(0).round(6).tolist(),
            "frames": [
                {
                    "pose_axis_angle": fit.pose[row].round(6).tolist(),
                    "translation": fit.translation[row].round(6).tolist(),
                    "fit_error_mm": round(float(fit.error_mm[row]), 3),
                }
                for row in range(len(targets))
            ],  # fmt: skip
            "fit_error_mm": {"mean": round(float(fit.error_mm.mean()), 3), "max": round(float(fit.error_mm.max()), 3)},
            "note": "the rig carries the frames' mean betas; each frame's pose was fitted with its own",
        }
        return motion, record


# --------------------------------------------------------------------- files
def write_person_rigs(directory: Path, rigger: Rigger, prediction: ImagePrediction) -> list[Path]:
    """``person_XX_rig.glb``, ``person_XX.bvh`` and ``person_XX_rig.json`` for every person."""
    names = [f"person_{index:02d}" for index in range(len(prediction.people))]
    written: list[Path] = []
    for (motion, params), name in zip(rigger.fit_people(prediction.people, names), names):
        written.append(write_rigged_glb(directory / f"{name}_rig.glb", [motion]))
        written.append(write_bvh(directory / f"{name}.bvh", motion))
        written.append(write_bytes(directory / f"{name}_rig.json", json.dumps(params, indent=1) + "\n"))
    return written


def write_track_rigs(directory: Path, rigger: Rigger, video: VideoTracks) -> list[Path]:
    """Per track ``track_XX/rig.glb``, ``motion.bvh``, ``rig.json``; ``tracks_rig.glb`` with all."""
    motions, written = [], []
    for track_id, items in video.tracks.items():
        name = f"track_{track_id:02d}"
        targets = np.stack([item.vertices_camera for item in items])
        motion, record = rigger.fit_track(targets, video.fps, name)
        record["frames_in_video"] = [int(item.frame) for item in items]
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        written.append(write_rigged_glb(folder / "rig.glb", [motion]))
        written.append(write_bvh(folder / "motion.bvh", motion))
        written.append(write_bytes(folder / "rig.json", json.dumps(record) + "\n"))
        motions.append(motion)
    if motions:
        written.append(write_rigged_glb(directory / "tracks_rig.glb", motions))
    return written
