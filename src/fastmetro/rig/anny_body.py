"""Anny as a differentiable function of the parameters the fitter recovers.

A body is given by

* ``phenotypes`` (B, 11) in [0, 1] (:data:`fastmetro.data.synthetic.body.PHENOTYPE_LABELS`),
* ``rotations`` (B, N, 3, 3): the local-ref delta rotations (Anny's default pose parameterisation:
  each bone's rotation in the world-aligned axes of the rest pose, carried by its parents) of the
  N bones in :data:`FIT_BONES`; every other bone (fingers, toes, face, the root) stays at rest,
* a rigid placement ``(global_rotation (B, 3, 3), translation (B, 3))`` from Anny's frame to the
  camera's (OpenCV axes, metres); it plays the root bone's part, so the root's delta is fixed.

:meth:`AnnyPoser.forward` gives Anny's full mesh (13,718 vertices) and the label vertices of
fastmetro's ``anny`` topology (level 0), posed and placed, plus the bone poses and rest model the
rigged exporters need (:meth:`AnnyPoser.motion`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy.spatial import cKDTree

from fastmetro import topology as topology_module
from fastmetro.data.synthetic.body import PHENOTYPE_LABELS
from fastmetro.data.synthetic.poses import BALL_JOINTS, HINGES, TWISTS, mirror_name
from fastmetro.errors import FastMetroError
from fastmetro.rig.motion import Motion, Rig


def _fit_bones() -> tuple[str, ...]:
    names: list[str] = []
    for name in (*BALL_JOINTS, *HINGES, *TWISTS):
        names.append(name)
        if name.endswith(".L"):
            names.append(mirror_name(name))
    return tuple(names)


#: The bones the fitter rotates: every bone the synthetic pose sampler moves except the root
#: (the placement's rotation) and the fingers (a FastMETRO mesh does not resolve them).
FIT_BONES = _fit_bones()


@dataclass(frozen=True)
class PosedAnny:
    """What :meth:`AnnyPoser.forward` returns (torch tensors, metres, camera frame).

    vertices: (B, 13718, 3) Anny's full mesh; label_vertices: (B, V0, 3) the topology's level 0;
    bone_poses: (B, 104, 4, 4) bone world frames in Anny's frame (before the placement);
    rest_vertices: (B, 13718, 3); rest_bone_poses: (B, 104, 4, 4) (the bind pose).
    """

    vertices: torch.Tensor
    label_vertices: torch.Tensor
    bone_poses: torch.Tensor
    rest_vertices: torch.Tensor
    rest_bone_poses: torch.Tensor


class AnnyPoser:
    """Anny (float32, CPU or a device) posed by :data:`FIT_BONES` rotations and placed rigidly."""

    def __init__(self, topology=None, device: str | torch.device = "cpu"):
        try:
            import anny
        except ImportError:  # pragma: no cover - anny is a dependency
            raise FastMetroError("anny: fitting Anny parameters needs `pip install anny`") from None
        self.device = torch.device(device)
        self.model = anny.Anny(phenotypes="all").to(torch.float32).to(self.device).requires_grad_(False)
        if tuple(self.model.phenotype_labels) != PHENOTYPE_LABELS:
            raise FastMetroError(f"anny: unexpected phenotype labels {self.model.phenotype_labels}")
        if self.model.pose_parameterization != "local-ref":
            raise FastMetroError(
                f"anny: expected the local-ref pose parameterisation, got {self.model.pose_parameterization}"
            )
        self.bone_labels = tuple(self.model.bone_labels)
        self.bone_parents = np.asarray(self.model.bone_parents, dtype=np.int64)
        self.fit_indices = torch.as_tensor([self.bone_labels.index(name) for name in FIT_BONES], device=self.device)
        self.topology = topology_module.load(topology or "anny")
        indices = getattr(self.topology, "source_vertex_indices", None)
        if indices is None:
            raise FastMetroError(f"{self.topology.name}: not an Anny topology (no source_vertex_indices)")
        self.label_indices = torch.as_tensor(np.array(indices, dtype=np.int64), device=self.device)

    @property
    def num_fit_bones(self) -> int:
        return len(FIT_BONES)

    @cached_property
    def faces(self) -> np.ndarray:
        """(F, 3) Anny's triangles (full mesh)."""
        return self.model.get_triangular_faces().cpu().numpy().astype(np.int64)

    def rest(self, phenotypes: torch.Tensor) -> dict:
        """Rest model of each phenotype (B, 11): rest_vertices (B, 13718, 3), rest_bone_poses (B, 104, 4, 4)."""
        model = self.model
        count = len(phenotypes)
        coefficients = model._get_phenotype_blendshape_coefficients(
            phenotypes,
            phenotypes.new_zeros((count, len(model.local_change_labels))),
            phenotypes.new_zeros((count, len(model.facial_action_labels))),
        )
        return model.get_rest_model(coefficients)

    def forward(
        self,
        phenotypes: torch.Tensor,
        rotations: torch.Tensor,
        global_rotation: torch.Tensor,
        translation: torch.Tensor,
        offsets: torch.Tensor | None = None,
    ) -> PosedAnny:
        """Pose and place B bodies (shapes in the module docstring). ``offsets`` (B or 1, 13718, 3),
        metres: displacements of the rest mesh (the body's own detail), skinned with it."""
        batch = len(rotations)
        rest_vertices, rest_poses, transforms, bone_poses = self._skeleton(phenotypes, rotations)
        if offsets is not None:
            rest_vertices = rest_vertices + offsets
        skinned = self.model.get_skinned_vertices(rest_vertices, transforms)
        vertices = skinned @ global_rotation.transpose(1, 2) + translation[:, None]
        rest_vertices = rest_vertices.expand(batch, -1, -1)
        return PosedAnny(vertices, vertices[:, self.label_indices], bone_poses, rest_vertices, rest_poses)

    def _skeleton(self, phenotypes: torch.Tensor, rotations: torch.Tensor):
        """Rest vertices (B, V, 3), bind poses, skinning transforms and bone poses (B, 104, 4, 4)."""
        batch = len(rotations)
        rest = self.rest(phenotypes)
        rest_poses = rest["rest_bone_poses"].expand(batch, -1, -1, -1)
        deltas = torch.eye(4, dtype=rotations.dtype, device=rotations.device).repeat(batch, len(self.bone_labels), 1, 1)
        deltas[:, self.fit_indices, :3, :3] = rotations
        transforms, bone_poses = self.model.get_bone_transforms(deltas, rest_poses)
        return rest["rest_vertices"].expand(batch, -1, -1), rest_poses, transforms, bone_poses

    def offset_maps(
        self, phenotypes: torch.Tensor, rotations: torch.Tensor, global_rotation: torch.Tensor
    ) -> torch.Tensor:
        """(B, 13718, 3, 3): how a rest-mesh offset of each vertex moves it in the camera frame
        (the placement's rotation times the skin-weighted bone rotations: skinning is linear in
        the rest mesh)."""
        transforms = self._skeleton(phenotypes, rotations)[2]
        indices = self.model.vertex_bone_indices.long()  # (V, K)
        weights = self.model.vertex_bone_weights.to(transforms.dtype)  # (V, K)
        linear = (weights[None, :, :, None, None] * transforms[:, indices, :3, :3]).sum(2)
        return global_rotation[:, None] @ linear

    @cached_property
    def nearest_label(self) -> torch.Tensor:
        """(13718,) for each vertex of Anny's mesh, the index (into the label vertices) of the
        nearest label vertex of the template (its own for a label vertex)."""
        template = self.model.template_vertices.reshape(-1, 3).cpu().numpy()
        labels = self.label_indices.cpu().numpy()
        nearest = np.asarray(cKDTree(template[labels]).query(template)[1], dtype=np.int64)
        nearest[labels] = np.arange(len(labels))
        return torch.as_tensor(nearest, device=self.device)

    @cached_property
    def neighbour_mean(self) -> torch.Tensor:
        """(13718, 13718) sparse: each vertex's mean over its neighbours on Anny's full mesh."""
        count = int(self.model.template_vertices.shape[-2])
        adjacency = topology_module.adjacency_from_faces(self.faces, count).tocoo()
        degree = np.maximum(np.asarray(adjacency.sum(axis=1)).ravel(), 1.0)
        indices = torch.as_tensor(np.stack([adjacency.row, adjacency.col]), dtype=torch.int64)
        values = torch.as_tensor(adjacency.data / degree[adjacency.row], dtype=torch.float32)
        mean = torch.sparse_coo_tensor(indices, values, (count, count), check_invariants=True)
        return mean.coalesce().to(self.device)

    __call__ = forward

    def motion(
        self, posed: PosedAnny, global_rotation, translation, rows, fps: float = 30.0, name: str = "person_00"
    ) -> Motion:
        """A :class:`Motion` of rows ``rows`` of ``posed`` (one person over len(rows) frames).

        The bind pose (shape) is that of the first row: rows of one person share a body
        (phenotypes and rest-mesh offsets).
        """
        rows = list(rows)
        as_numpy = lambda tensor: tensor.detach().cpu().double().numpy()  # noqa: E731
        first = rows[0]
        model = self.model
        rig = Rig(
            bone_names=self.bone_labels,
            parents=np.where(self.bone_parents < 0, -1, self.bone_parents),
            bind_poses=as_numpy(posed.rest_bone_poses[first]),
            vertices=as_numpy(posed.rest_vertices[first]),
            faces=self.faces,
            skin_indices=model.vertex_bone_indices.cpu().numpy().astype(np.int64),
            skin_weights=model.vertex_bone_weights.cpu().double().numpy(),
        )
        placement = np.tile(np.eye(4), (len(rows), 1, 1))
        placement[:, :3, :3] = as_numpy(global_rotation[rows])
        placement[:, :3, 3] = as_numpy(translation[rows])
        return Motion(rig, as_numpy(posed.bone_poses[rows]), placement, fps=fps, name=name)
