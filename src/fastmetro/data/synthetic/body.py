"""The Anny body used by the synthetic generator: batched posing plus label extraction.

Anny (``pip install anny``, Apache-2.0) is a free parametric human body: 11 phenotype parameters
(gender, age, muscle, weight, height, proportions, cupsize, firmness, and african / asian /
caucasian mixing weights) and a 104-bone rig. Its world frame is x = the body's left,
y = backwards, z = up, metres.

The *rendered* mesh is Anny's full mesh (eyes included); the *label* vertices are the mesh of
fastmetro's ``"anny"`` topology (level 0), whose vertices map onto Anny's by index and whose
14-joint regressor (the LSP joints of SMPL) gives the 3D joints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastmetro import topology as topology_module
from fastmetro.data.synthetic.poses import IntersectionTest, PoseSampler, Skeleton, part_name
from fastmetro.errors import FastMetroError
from fastmetro.render import VertexNormals

PHENOTYPE_LABELS = (
    "gender",
    "age",
    "muscle",
    "weight",
    "height",
    "proportions",
    "cupsize",
    "firmness",
    "african",
    "asian",
    "caucasian",
)


# Vertex regions for clothing colours: region -> dominant-bone name prefixes.
CLOTHING_REGIONS = {
    "torso": ("spine", "clavicle", "shoulder", "breast", "pelvis", "root"),
    "hips": ("pelvis", "root"),
    "upper_arm": ("upperarm",),
    "forearm": ("lowerarm",),
    "thigh": ("upperleg",),
    "shank": ("lowerleg",),
    "feet": ("foot", "toe"),
    "head": ("head", "neck"),
    "skull": ("head",),
}


@dataclass(frozen=True)
class LabelMesh:
    """The labelled mesh: which Anny vertices it keeps and how joints are regressed.

    anny_indices: (V0,) int indices into Anny's vertices; joint_regressor: (K, V0);
    joint_names: K names.
    """

    anny_indices: np.ndarray
    joint_regressor: np.ndarray
    joint_names: tuple[str, ...]


def load_label_mesh(topology=None) -> LabelMesh:
    """The label mesh of fastmetro's Anny topology (or of a given Topology value)."""
    if topology is None or isinstance(topology, str):
        topology = topology_module.load(topology or "anny")
    indices = getattr(topology, "source_vertex_indices", None)
    if indices is None:  # a topology defined directly on Anny's full vertex set
        indices = np.arange(topology.num_vertices)
    regressor = np.asarray(topology.joint_regressor, dtype=np.float64)
    if hasattr(regressor, "toarray"):
        regressor = regressor.toarray()
    return LabelMesh(np.asarray(indices, dtype=np.int64), regressor, tuple(topology.joint_names))


class AnnyBody:
    """Anny in float32 on the CPU, posed in batches (one instance per worker process).

    Every computation runs on one torch thread: a reduction split over a different number of
    threads rounds differently, and the data must not depend on how many workers made them.
    """

    def __init__(self, label_mesh: LabelMesh | None = None):
        import torch

        try:
            import anny
        except ImportError:  # pragma: no cover - anny is a dependency
            raise FastMetroError("anny: the synthetic generator needs `pip install anny`") from None
        self._torch = torch
        with self._one_thread():  # loading computes too (blend shapes, rest skeleton): same rounding
            self._load(anny, label_mesh)

    def _load(self, anny, label_mesh) -> None:
        torch = self._torch
        self.model = anny.Anny(phenotypes="all").to(torch.float32).requires_grad_(False)
        if tuple(self.model.phenotype_labels) != PHENOTYPE_LABELS:
            raise FastMetroError(f"anny: unexpected phenotype labels {self.model.phenotype_labels}")
        self.faces = self.model.get_triangular_faces().numpy().astype(np.int32)
        self.bone_labels = tuple(self.model.bone_labels)
        self._normals = VertexNormals(self.faces, self.model.template_vertices.shape[0])
        rest = self.model()
        rest_vertices = rest["vertices"][0].numpy()
        self.num_vertices = len(rest_vertices)
        self.skeleton = Skeleton.from_parents(
            self.bone_labels, rest["rest_bone_heads"][0].numpy(), list(self.model.bone_parents)
        )
        self.pose_sampler = PoseSampler(self.skeleton)
        bone_index = self.model.vertex_bone_indices.numpy()
        bone_weight = self.model.vertex_bone_weights.numpy()
        dominant = bone_index[np.arange(len(bone_index)), bone_weight.argmax(1)]
        self.vertex_bones = np.array([self.bone_labels[i] for i in dominant])
        self.vertex_parts = np.array([part_name(name) for name in self.vertex_bones])
        # Clothing regions by dominant bone (computed once; the colour sampler only indexes).
        self.regions = {
            region: np.array([name.startswith(prefixes) for name in self.vertex_bones])
            for region, prefixes in CLOTHING_REGIONS.items()
        }
        self.intersection_test = IntersectionTest(self.vertex_parts, rest=(rest_vertices, self.normals(rest_vertices)))
        self.label_mesh = label_mesh if label_mesh is not None else load_label_mesh()
        if self.label_mesh.anny_indices.max() >= self.num_vertices:
            raise FastMetroError(
                f"anny topology: label vertex indices reach {self.label_mesh.anny_indices.max()}, "
                f"Anny has {self.num_vertices} vertices"
            )

    def normals(self, vertices: np.ndarray) -> np.ndarray:
        """Outward unit vertex normals (V, 3) of a posed Anny mesh."""
        return self._normals(vertices)

    def _one_thread(self):
        """One torch thread and no autograd, restored on exit (never changed process-wide)."""
        import contextlib

        torch = self._torch

        @contextlib.contextmanager
        def scope():
            previous = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.no_grad():
                    yield
            finally:
                torch.set_num_threads(previous)

        return scope()

    def rest(self, phenotypes: np.ndarray) -> dict:
        """Rest-pose model of each shape, phenotypes (B, 11) in [0, 1] (reused across pose retries)."""
        with self._one_thread():
            return self._rest(phenotypes)

    def _rest(self, phenotypes: np.ndarray) -> dict:
        torch = self._torch
        tensor = torch.from_numpy(np.ascontiguousarray(phenotypes, dtype=np.float32))
        coefficients = self.model._get_phenotype_blendshape_coefficients(
            tensor,
            torch.zeros((len(tensor), len(self.model.local_change_labels)), dtype=torch.float32),
            torch.zeros((len(tensor), len(self.model.facial_action_labels)), dtype=torch.float32),
        )
        return self.model.get_rest_model(coefficients)

    def pose(self, rest: dict, rows: list[int] | np.ndarray, poses: np.ndarray) -> np.ndarray:
        """Skin rest models ``rest[rows]`` with poses (B, J, 4, 4) -> vertices (B, V, 3) metres, Anny world."""
        with self._one_thread():
            return self._pose(rest, rows, poses)

    def _pose(self, rest: dict, rows, poses: np.ndarray) -> np.ndarray:
        torch = self._torch
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        pose_tensor = torch.from_numpy(np.ascontiguousarray(poses, dtype=np.float32))
        bone_transforms, _ = self.model.get_bone_transforms(pose_tensor, rest["rest_bone_poses"][rows])
        vertices = self.model.get_skinned_vertices(rest["rest_vertices"][rows], bone_transforms)
        return vertices.numpy()

    def forward(self, phenotypes: np.ndarray, poses: np.ndarray) -> np.ndarray:
        """phenotypes (B, 11) in [0, 1], poses (B, J, 4, 4) -> vertices (B, V, 3) metres, Anny world."""
        return self.pose(self.rest(phenotypes), np.arange(len(phenotypes)), poses)

    def labels(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anny vertices (V, 3) -> (label vertices (V0, 3), joints (K, 3)), same frame and units."""
        label_vertices = vertices[self.label_mesh.anny_indices]
        return label_vertices, self.label_mesh.joint_regressor @ label_vertices
