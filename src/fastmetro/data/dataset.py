"""Training/evaluation samples from METRO-format datasets, and multi-dataset mixing (paper Eq. 6).

:class:`MeshDataset` turns each row of a dataset yaml into the sample dict of
docs/architecture.md::

    image          (3, S, S) float32   ImageNet-normalised crop
    joints_2d      (K, 3) float32      crop-normalised [-1, 1] x, y + visibility
    joints_3d      (K, 4) float32      metres + confidence, centred on mean(root joints)
    vertices       (V0, 3) float32     metres, centred on root_regressor @ vertices (zeros if none);
                                       hands from a MANO model file: on MANO's kinematic wrist joint
                                       (as released)
    has_joints_2d, has_joints_3d, has_vertices   float32 0/1
    smpl_pose      (P,) float32        SMPL (72) / MANO (48) axis-angle after augmentation (global
                                       orientation rotated in-plane, left/right swapped on a flip),
                                       zeros if none; with a body model only
    smpl_betas     (10,) float32       shape coefficients (zeros if none); with a body model only
    has_smpl       float32 0/1         pose/betas available; with a body model only
    key            str                 row key

Ground-truth vertices come from the body model (SMPL/MANO layer at the label's pose/betas)
when the label has ``has_smpl`` and a body model is given, else from the shard's vertex side
file (``has_vertices``), else they are zeros with ``has_vertices = 0``.

Bad rows raise a one-line :class:`~fastmetro.errors.FastMetroError` naming the file and key, or,
with ``skip_bad_rows=True``, are logged (with the key) and replaced by the next good row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch

from fastmetro.conventions import IMAGE_SIZE, centre_joints, centre_mesh
from fastmetro.data.augment import (
    AugmentConfig,
    apply_occlusion,
    apply_pixel_noise,
    augment_pose,
    crop_image,
    normalise_image,
    sample_params,
    transform_joints_2d,
    transform_points_3d,
)
from fastmetro.data.labels import Annotation, parse_annotation
from fastmetro.data.tsv import BadRowError, RawRow, TSVDataset
from fastmetro.errors import FastMetroError

logger = logging.getLogger("fastmetro.data")


class MeshDataset(torch.utils.data.Dataset):
    """One METRO-format dataset (yaml) as training or evaluation samples.

    Args:
        yaml_path: dataset yaml (composite or not).
        topology: a :class:`~fastmetro.topology.Topology` (joint count K, flips, root definitions).
        train: draw augmentation (if ``augment`` is given); False = deterministic crop.
        augment: augmentation settings (None = none, e.g. evaluation).
        image_size: crop side S in pixels.
        body_model: optional :class:`~fastmetro.data.body_models.BodyModel` whose vertex count is
            the topology's V0; used for rows with ``has_smpl``.
        skip_bad_rows: replace a bad row by the next good one (logged with its key) instead of
            raising a one-line error.
        seed: base seed of the augmentation draws (each draw also depends on the index and a
            per-process draw counter and torch's per-worker seed).
    """

    def __init__(
        self,
        yaml_path: str | os.PathLike,
        topology,
        train: bool = False,
        augment: AugmentConfig | None = None,
        image_size: int = IMAGE_SIZE,
        body_model=None,
        skip_bad_rows: bool = False,
        seed: int = 0,
    ):
        self.rows = TSVDataset(yaml_path)
        self.yaml_path = self.rows.yaml_path
        self.topology = topology
        self.train = train
        self.augment = augment if train else None
        if self.augment is not None and self.augment.flip_prob > 0 and topology.vertex_flip is None:
            logger.warning(
                "%s: topology %r has no vertex flip permutation; horizontal flip disabled",
                self.yaml_path,
                topology.name,
            )
            self.augment = self.augment.without_flip()
        self.image_size = int(image_size)
        self.body_model = body_model
        if body_model is not None and body_model.num_vertices != topology.num_vertices:
            raise FastMetroError(
                f"body model has {body_model.num_vertices} vertices but topology {topology.name!r} has "
                f"{topology.num_vertices}"
            )
        self.skip_bad_rows = skip_bad_rows
        self.seed = int(seed)
        self.skipped: dict[str, str] = {}  # key -> problem, this process only
        self._draws = 0
        self._root_regressor = np.asarray(topology.root_regressor, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ sample assembly
    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad_rows:
            try:
                return self.load(index)
            except BadRowError as error:  # one line naming file and key, also from a worker
                raise error.with_traceback(None) from None
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                return self.load(current)
            except BadRowError as error:
                if error.key not in self.skipped:
                    self.skipped[error.key] = error.problem
                    logger.warning("skipping bad row (%d so far in this process): %s", len(self.skipped), error)
        raise FastMetroError(f"{self.yaml_path}: every row is bad ({len(self.skipped)} skipped)")

    def annotation(self, row: RawRow) -> Annotation:
        return parse_annotation(
            row.label,
            row.key,
            self.rows.source_name_of(row),
            num_joints=self.topology.num_joints,
            image_hw=row.image.shape[:2],
            pose_sizes=(self.body_model.num_pose_parameters,) if self.body_model is not None else None,
        )

    def load(self, index: int) -> dict:
        """The sample of row ``index``; raises :class:`BadRowError` for a bad row."""
        row = self.rows[index]
        annotation = self.annotation(row)
        vertices, kinematic_root = self._ground_truth_vertices(row, annotation)
        # torch.initial_seed() differs per DataLoader worker and follows torch.manual_seed: draws are
        # reproducible and never repeated across workers or epochs.
        rng = (
            np.random.default_rng([self.seed, index, torch.initial_seed() % 2**63, self._draws])
            if self.augment
            else None
        )
        self._draws += 1
        params = sample_params(self.augment, rng) if self.augment else sample_params(None, None)

        crop = crop_image(row.image, annotation.center, annotation.scale, params, self.image_size)
        pixels = apply_pixel_noise(crop, params)
        if self.augment is not None:
            pixels = apply_occlusion(pixels, params, self.augment)
        num_joints = self.topology.num_joints

        joints_2d = np.zeros((num_joints, 3))
        if annotation.joints_2d is not None:
            joints_2d = transform_joints_2d(
                annotation.joints_2d, annotation.center, annotation.scale, params, self.topology.joint_flip
            )
        joints_3d = np.zeros((num_joints, 4))
        if annotation.joints_3d is not None:
            joints_3d = transform_points_3d(annotation.joints_3d, params, self.topology.joint_flip)
            joints_3d[:, :3] = centre_joints(joints_3d[:, :3], self.topology.root_joints)
        if vertices is not None:
            vertices = transform_points_3d(vertices, params, self.topology.vertex_flip)
            if kinematic_root is None:
                vertices = centre_mesh(vertices, self._root_regressor)
            else:  # a single point: flipping it only negates x
                vertices -= transform_points_3d(kinematic_root[None], params, np.zeros(1, dtype=np.int64))
        else:
            vertices = np.zeros((self.topology.num_vertices, 3))

        sample = {
            "image": torch.from_numpy(normalise_image(pixels)),
            "joints_2d": torch.from_numpy(joints_2d.astype(np.float32)),
            "joints_3d": torch.from_numpy(joints_3d.astype(np.float32)),
            "vertices": torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32)),
            "has_joints_2d": torch.tensor(float(annotation.joints_2d is not None)),
            "has_joints_3d": torch.tensor(float(annotation.joints_3d is not None)),
            "has_vertices": torch.tensor(float(self._has_vertices(row, annotation))),
            "key": row.key,
        }
        if self.body_model is not None:  # parameter targets (the SMPL parameter regressor's losses)
            sample.update(self._parameter_targets(annotation, params))
        return sample

    def _parameter_targets(self, annotation: Annotation, params) -> dict:
        size = self.body_model.num_pose_parameters
        pose, betas = np.zeros(size), np.zeros(10)
        if annotation.has_smpl:
            assert annotation.pose is not None and annotation.betas is not None  # has_smpl says so
            pose = augment_pose(annotation.pose.reshape(-1)[:size], params)
            count = min(10, annotation.betas.size)
            betas[:count] = annotation.betas.reshape(-1)[:count]
        return {
            "smpl_pose": torch.from_numpy(pose.astype(np.float32)),
            "smpl_betas": torch.from_numpy(betas.astype(np.float32)),
            "has_smpl": torch.tensor(float(annotation.has_smpl)),
        }

    def _has_vertices(self, row: RawRow, annotation: Annotation) -> bool:
        return (annotation.has_smpl and self.body_model is not None) or row.vertices is not None

    def _ground_truth_vertices(
        self, row: RawRow, annotation: Annotation
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Full-resolution ground-truth vertices (V0, 3) or None, and the root point to centre
        them on when it is not the topology's root regressor (hands from a MANO model file: the
        kinematic wrist joint, as the released hand training) or None."""
        source = self.rows.source_name_of(row)
        if annotation.has_smpl and self.body_model is not None:
            with torch.no_grad():
                output = self.body_model(
                    torch.as_tensor(annotation.pose, dtype=torch.float32)[None],
                    torch.as_tensor(annotation.betas, dtype=torch.float32)[None],
                )
            vertices = output.vertices[0].double().numpy()
            if not np.isfinite(vertices).all():
                raise BadRowError(source, row.key, "body model gave non-finite vertices for this pose/betas")
            wrist = output.joints[0, 0].double().numpy() if self.topology.is_hand else None
            return vertices, wrist
        if row.vertices is not None:
            if row.vertices.shape != (self.topology.num_vertices, 3):
                raise BadRowError(
                    source,
                    row.key,
                    f"vertices have shape {row.vertices.shape}, topology "
                    f"{self.topology.name!r} needs ({self.topology.num_vertices}, 3)",
                )
            return row.vertices.astype(np.float64), None
        return None, None


class MixedDataset(torch.utils.data.ConcatDataset):
    """Several :class:`MeshDataset` s as one, with optional per-dataset sampling weights (Eq. 6).

    Every sample carries its own availability flags (``has_joints_2d`` ...), so the criterion
    masks each loss term per sample whatever dataset it came from.

    ``weights``: relative share of each dataset in a draw (None = proportional to size, i.e.
    plain concatenation). :meth:`sampler` returns the matching sampler.
    """

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], weights: Sequence[float] | None = None):
        super().__init__(list(datasets))
        if weights is not None:
            if len(weights) != len(self.datasets):
                raise FastMetroError(f"{len(weights)} mixing weights for {len(self.datasets)} datasets")
            if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise FastMetroError(f"mixing weights must be non-negative with a positive sum: {list(weights)}")
        self.weights = None if weights is None else [float(w) for w in weights]

    def sample_weights(self) -> torch.Tensor:
        """(N,) per-sample probabilities: dataset i's share spread evenly over its samples."""
        sizes = [end - start for start, end in zip([0, *self.cumulative_sizes], self.cumulative_sizes)]
        shares = self.weights if self.weights is not None else sizes
        total = float(sum(shares))
        return torch.cat(
            [
                torch.full((size,), share / total / max(size, 1), dtype=torch.float64)
                for size, share in zip(sizes, shares)
            ]
        )

    def sampler(self, num_samples: int | None = None, generator: torch.Generator | None = None):
        """A sampler drawing with the mixing weights (random permutation when weights is None)."""
        if self.weights is None:
            return torch.utils.data.RandomSampler(self, generator=generator, num_samples=num_samples)
        return torch.utils.data.WeightedRandomSampler(
            cast(Sequence[float], self.sample_weights()),  # a tensor is what the sampler keeps anyway
            num_samples or len(self),
            replacement=True,
            generator=generator,
        )


__all__ = ["MeshDataset", "MixedDataset"]
