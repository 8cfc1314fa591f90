"""One worker's renderer of shards: Anny bodies in their scenes, labels, and the shard files.

A :class:`ShardMaker` owns an Anny model and an OpenGL context (one per process). Sample ``i``
draws its shape, pose family and pose from its own streams, then the scene (generator version 1
or 2, see :mod:`fastmetro.data.synthetic.config`), renders, and labels what it rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmetro.conventions import scale_from_side
from fastmetro.data.synthetic.backgrounds import SplitBackgrounds
from fastmetro.data.synthetic.body import AnnyBody
from fastmetro.data.synthetic.clothing import sample_clothing
from fastmetro.data.synthetic.config import Shard, SynthConfig, pose_weights, sample_generators, validate
from fastmetro.data.synthetic.framing import in_image, sample_framed_camera
from fastmetro.data.synthetic.lighting import sample_lights
from fastmetro.data.synthetic.pose_families import FAMILIES
from fastmetro.data.synthetic.pose_mix import FamilySampler
from fastmetro.data.synthetic.scene import (
    Backgrounds,
    sample_camera,
    sample_light,
    sample_occluder,
    sample_phenotypes,
    sample_vertex_colours,
)
from fastmetro.data.synthetic.splits import get_split
from fastmetro.data.tsv import TSVDatasetWriter
from fastmetro.io import atomic_write
from fastmetro.render import Renderer

if TYPE_CHECKING:
    from fastmetro.data.synthetic.scene import Camera
    from fastmetro.render import MeshPart

BOX_PADDING = 1.2


def box_of(points_2d: np.ndarray, size: int | None = None) -> tuple[list[float], float]:
    """(center [x, y] px, scale = padded box side / 200) of a set of image points (N, 2).

    ``size``: clip the points to a ``size`` square image first (the box of the visible body).
    """
    if size is not None:
        points_2d = np.clip(points_2d, -0.5, size - 0.5)
    low, high = points_2d.min(0), points_2d.max(0)
    side = float((high - low).max()) * BOX_PADDING
    return [float(v) for v in (low + high) / 2.0], scale_from_side(side)


@dataclass
class SceneDraw:
    """Everything around the body in one sample (camera coordinates for the meshes)."""

    camera: Camera
    camera_vertices: np.ndarray  # (V, 3) float32
    colours: np.ndarray  # (V, 3) float32
    lights: tuple  # render.Light, 1-3
    background: np.ndarray  # (S, S, 3) uint8
    occluder: MeshPart | None
    cut: bool = False  # the camera cuts the body (close-up)


class ShardMaker:
    """Renders shards. One per process: it owns an Anny model and an OpenGL context."""

    def __init__(self, config: SynthConfig, label_mesh=None):

        self.body = AnnyBody(label_mesh)
        self.families = FamilySampler(self.body.pose_sampler)
        self.renderer = Renderer(config.size, config.size)
        rest = self.body.forward(np.full((1, 11), 0.5), np.tile(np.eye(4), (1, len(self.body.bone_labels), 1, 1)))
        self.rest_points = rest[0]  # (V, 3) a mid-phenotype rest pose: where clothing patterns are painted
        self.rest_height = rest[0, :, 2]
        self.stats = {"pose_rejections": 0, "pose_fallbacks": 0}
        self._set_config(config)
        import trimesh  # noqa: F401  (occluder meshes; imported now, not inside the first shard)

    def _set_config(self, config: SynthConfig) -> None:

        validate(config)
        old: SynthConfig | None = getattr(self, "config", None)  # None: the first configuration
        if old is None or (old.split, old.generator_version) != (config.split, config.generator_version):
            self.split = get_split(config.split)
            self.backgrounds = Backgrounds() if config.generator_version == 1 else SplitBackgrounds(self.split)
        self.pose_weights = pose_weights(config)
        self.salt = self.split.seed_salt
        self.config = config

    def reconfigure(self, config: SynthConfig) -> ShardMaker:
        """Reuse this maker (its loaded Anny model) for another dataset's settings."""
        if config.size != self.config.size:
            self.renderer.release()
            self.renderer = Renderer(config.size, config.size)
        self._set_config(config)
        return self

    def streams(self, index: int) -> dict[str, np.random.Generator]:
        return sample_generators(self.config.seed, index, self.salt)

    # ------------------------------------------------------------------ bodies
    def pose_bodies(self, indices: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Shapes, pose families and intersection-checked poses for ``indices`` (keys of :meth:`streams`).

        Returns phenotypes (B, 11), vertices (B, V, 3) and their unit normals (B, V, 3), Anny
        world, and the B family names. Version 1 draws no family (all "standing").
        """
        body = self.body
        streams = [self.streams(index) for index in indices]
        phenotypes = np.stack([sample_phenotypes(s["shape"]) for s in streams])
        if self.config.generator_version == 1:
            families = ["standing"] * len(indices)
        else:
            families = [self.families.choose(s["pose"], self.pose_weights) for s in streams]
        rest = body.rest(phenotypes)
        vertices = np.zeros((len(indices), body.num_vertices, 3), np.float32)
        normals = np.zeros_like(vertices)
        pending = list(range(len(indices)))
        for _attempt in range(self.config.max_pose_attempts):
            if not pending:
                break
            poses = np.stack([self._draw_pose(streams[i]["pose"], families[i]) for i in pending])
            pending = self._keep_clean(rest, pending, poses, vertices, normals)
            self.stats["pose_rejections"] += len(pending)
        if pending and self.config.generator_version >= 2:  # the family's fixed pose
            poses = np.stack([self.families.fallback(families[i]) for i in pending])
            pending = self._keep_clean(rest, pending, poses, vertices, normals)
        if pending:  # never found a clean pose: the rest (A-) pose is always clean
            self.stats["pose_fallbacks"] += len(pending)
            rest_pose = np.tile(np.eye(4, dtype=np.float32), (len(pending), len(body.bone_labels), 1, 1))
            vertices[pending] = body.pose(rest, pending, rest_pose)
            normals[pending] = [body.normals(v) for v in vertices[pending]]
        return phenotypes, vertices, normals, families

    def _draw_pose(self, rng: np.random.Generator, family: str) -> np.ndarray:
        if self.config.generator_version == 1:
            return self.body.pose_sampler.sample(rng)
        return self.families.sample(rng, family)

    def _keep_clean(self, rest, pending: list[int], poses, vertices, normals) -> list[int]:
        """Pose ``pending`` samples; store those the intersection test accepts, return the others."""
        posed = self.body.pose(rest, pending, poses)
        rejected = []
        for row, sample in enumerate(pending):
            posed_normals = self.body.normals(posed[row])
            if self.body.intersection_test.accepts(posed[row], posed_normals):
                vertices[sample], normals[sample] = posed[row], posed_normals
            else:
                rejected.append(sample)
        return rejected

    # ------------------------------------------------------------------ scenes
    def _scene_v1(self, rng: np.random.Generator, world_vertices: np.ndarray) -> SceneDraw:

        camera = sample_camera(rng, world_vertices, self.config.size)
        camera_vertices = camera.to_camera(world_vertices).astype(np.float32)
        colours = sample_vertex_colours(rng, self.body.regions, self.rest_height)
        light = sample_light(rng)
        background = self.backgrounds.sample(rng, self.config.size, self.config.backgrounds)
        occluder = sample_occluder(rng, camera_vertices) if self.config.occluders else None
        return SceneDraw(camera, camera_vertices, colours, (light,), background, occluder)

    def _scene_v2(self, rng: np.random.Generator, world_vertices: np.ndarray, family: str) -> SceneDraw:

        _, world_joints = self.body.labels(world_vertices.astype(np.float64))
        camera, cut = sample_framed_camera(
            rng, world_vertices, world_joints, self.config.size, FAMILIES[family].elevation, self.split.fov_degrees
        )
        camera_vertices = camera.to_camera(world_vertices).astype(np.float32)
        colours = sample_clothing(rng, self.body.regions, self.rest_points, self.split.patterns)
        lights = sample_lights(rng)
        background = self.backgrounds.sample(rng, self.config.size, self.config.backgrounds)
        occluder = sample_occluder(rng, camera_vertices) if self.config.occluders else None
        return SceneDraw(camera, camera_vertices, colours, lights, background, occluder, cut)

    # ------------------------------------------------------------------ one sample
    def render_sample(
        self,
        index: int,
        phenotypes: np.ndarray,
        world_vertices: np.ndarray,
        world_normals: np.ndarray,
        family: str = "standing",
    ) -> dict:
        """Everything stored for sample ``index``: image, mask, label dict, label vertices."""
        rng = self.streams(index)["scene"]
        if self.config.generator_version == 1:
            scene = self._scene_v1(rng, world_vertices)
        else:
            scene = self._scene_v2(rng, world_vertices, family)
        camera = scene.camera
        result = self.renderer.render(
            scene.camera_vertices,
            self.body.faces,
            camera.intrinsics,
            color=scene.colours,
            background=scene.background,
            light=scene.lights,
            extra_meshes=(scene.occluder,) if scene.occluder is not None else (),
            normals=world_normals @ camera.rotation.T.astype(np.float32),
            with_depth=False,
        )
        label, label_vertices = self._label(scene, phenotypes)
        if self.config.generator_version >= 2:
            label["pose_family"] = family
            label["cut_by_border"] = int(scene.cut)
        return {"image": result.rgb, "mask": result.mask, "label": label, "vertices": label_vertices}

    def _label(self, scene: SceneDraw, phenotypes: np.ndarray) -> tuple[dict, np.ndarray]:
        """The METRO label dict of a sample (2D visibility = inside the image) and its label vertices."""
        size = self.config.size
        camera = scene.camera
        label_vertices, joints = self.body.labels(scene.camera_vertices.astype(np.float64))
        joints_2d = camera.project(joints)
        inside = in_image(joints_2d, size)
        # Version 2 frames cut bodies: the box is the visible part's (as a person detector's).
        center, scale = box_of(camera.project(label_vertices), size if self.config.generator_version >= 2 else None)
        intrinsics = camera.intrinsics
        label = {
            "center": center,
            "scale": scale,
            "2d_joints": np.concatenate([joints_2d, inside[:, None]], 1),
            "has_2d_joints": 1,
            "3d_joints": np.concatenate([joints, np.ones((len(joints), 1))], 1),
            "has_3d_joints": 1,
            "has_smpl": 0,
            "joints_format": "topology",
            "camera": {"fx": intrinsics[0, 0], "fy": intrinsics[1, 1], "cx": intrinsics[0, 2], "cy": intrinsics[1, 2]},
            "anny_phenotypes": [round(float(v), 6) for v in phenotypes],
        }
        return label, label_vertices

    # ------------------------------------------------------------------ one shard
    def make_shard(self, shard: Shard, on_sample=None) -> Path:
        """Render and publish one shard (atomic: its yaml appears last). Returns the yaml path."""
        config = self.config
        # Temporaries of this shard left by a killed run (SIGKILL skips the writer's clean-up).
        for stale in config.out_dir.glob(f".{shard.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        masks_name = f"{shard.name}.masks.npy"
        masks = []
        with TSVDatasetWriter(
            config.out_dir,
            shard.name,
            image_format="jpg",
            jpeg_quality=config.jpeg_quality,
            vertices_dtype=config.vertices_dtype,
            extra_yaml={"masks": masks_name},
        ) as writer:
            for first in range(shard.start, shard.stop, config.batch_size):
                indices = list(range(first, min(first + config.batch_size, shard.stop)))
                phenotypes, vertices, normals, families = self.pose_bodies(indices)
                for row, index in enumerate(indices):
                    sample = self.render_sample(index, phenotypes[row], vertices[row], normals[row], families[row])
                    writer.add(f"{index:08d}", sample["image"], sample["label"], vertices=sample["vertices"])
                    masks.append(np.packbits(sample["mask"], axis=1))
                    if on_sample is not None:
                        on_sample()
            # Before the writer publishes the yaml: a finished shard always has its masks.
            with atomic_write(config.out_dir / masks_name) as handle:
                np.save(handle, np.stack(masks), allow_pickle=False)
        return writer.yaml_path
