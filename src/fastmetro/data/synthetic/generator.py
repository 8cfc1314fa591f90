"""``fastmetro synth``: render a METRO-format dataset of random Anny bodies.

Output folder layout::

    DIR/synth.json                       the settings (a rerun must use the same ones)
    DIR/train_00000.{img,label,hw}.tsv   shards of ``shard_size`` samples (+ .lineidx)
    DIR/train_00000.vertices.npy         (N, V0, 3) label vertices, camera coordinates, metres
    DIR/train_00000.masks.npy            (N, S, ceil(S/8)) uint8 bit-packed body masks
    DIR/train_00000.yaml                 written last: its presence marks a finished shard
    DIR/test_00000.*                     the last ``test_fraction`` of the samples
    DIR/train.yaml, DIR/test.yaml        composite datasets over the shards (read these)
    DIR/preview.png                      with ``--preview``: 3x3 samples with their 2D joints

Sample ``i`` draws everything from generators seeded with ``(seed, i, stream)``, and shards are
fixed index ranges, so the data do not depend on the number of workers or on interruptions; a
rerun skips every shard whose yaml exists and never rewrites it.

Labels per row (see :mod:`fastmetro.data.labels`): ``center``/``scale`` (box around the
projected mesh, side = 1.2 x its larger extent, /200), ``2d_joints`` (K, 3) pixels + in-image
flag, ``3d_joints`` (K, 4) camera coordinates in metres + confidence 1, ``has_2d_joints`` /
``has_3d_joints`` 1, ``has_smpl`` 0, ``joints_format`` "topology", ``camera`` intrinsics,
``has_vertices`` 1 with the row of the vertex side file, and ``anny_phenotypes`` (the 11 values).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastmetro.data.synthetic.config import (  # noqa: F401  (re-exported: the generator's API)
    GENERATOR_VERSION, MANIFEST_KEYS_ADDED_LATER, Shard, SynthConfig, check_manifest, plan_shards,
    pose_weights, read_manifest, sample_generators, validate,
)
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write

BOX_PADDING = 1.2


def box_of(points_2d: np.ndarray, size: int | None = None) -> tuple[list[float], float]:
    """(center [x, y] px, scale = padded box side / 200) of a set of image points (N, 2).

    ``size``: clip the points to a ``size`` square image first (the box of the visible body).
    """
    if size is not None:
        points_2d = np.clip(points_2d, -0.5, size - 0.5)
    low, high = points_2d.min(0), points_2d.max(0)
    side = float((high - low).max()) * BOX_PADDING
    return [float(v) for v in (low + high) / 2.0], side / 200.0


@dataclass
class SceneDraw:
    """Everything around the body in one sample (camera coordinates for the meshes)."""

    camera: object  # scene.Camera
    camera_vertices: np.ndarray  # (V, 3) float32
    colours: np.ndarray  # (V, 3) float32
    lights: tuple  # render.Light, 1-3
    background: np.ndarray  # (S, S, 3) uint8
    occluder: object | None  # render.MeshPart
    cut: bool = False  # the camera cuts the body (close-up)


class ShardMaker:
    """Renders shards. One per process: it owns an Anny model and an OpenGL context."""

    def __init__(self, config: SynthConfig, label_mesh=None):
        from fastmetro.data.synthetic.body import AnnyBody
        from fastmetro.data.synthetic.pose_mix import FamilySampler
        from fastmetro.render import Renderer

        self.body = AnnyBody(label_mesh)
        self.families = FamilySampler(self.body.pose_sampler)
        self.renderer = Renderer(config.size, config.size)
        rest = self.body.forward(np.full((1, 11), 0.5), np.tile(np.eye(4), (1, len(self.body.bone_labels), 1, 1)))
        self.rest_points = rest[0]  # (V, 3) a mid-phenotype rest pose: where clothing patterns are painted
        self.rest_height = rest[0, :, 2]
        self.stats = {"pose_rejections": 0, "pose_fallbacks": 0}
        self.config = None
        self._set_config(config)
        import trimesh  # noqa: F401  (occluder meshes; imported now, not inside the first shard)

    def _set_config(self, config: SynthConfig) -> None:
        from fastmetro.data.synthetic.backgrounds import SplitBackgrounds
        from fastmetro.data.synthetic.scene import Backgrounds
        from fastmetro.data.synthetic.splits import get_split

        validate(config)
        old = self.config
        if old is None or (old.split, old.generator_version) != (config.split, config.generator_version):
            self.split = get_split(config.split)
            self.backgrounds = Backgrounds() if config.generator_version == 1 else SplitBackgrounds(self.split)
        self.pose_weights = pose_weights(config)
        self.salt = self.split.seed_salt
        self.config = config

    def reconfigure(self, config: SynthConfig) -> "ShardMaker":
        """Reuse this maker (its loaded Anny model) for another dataset's settings."""
        from fastmetro.render import Renderer

        if config.size != self.config.size:
            self.renderer.release()
            self.renderer = Renderer(config.size, config.size)
        self._set_config(config)
        return self

    def streams(self, index: int) -> dict[str, np.random.Generator]:
        return sample_generators(self.config.seed, index, self.salt)

    # ------------------------------------------------------------------ bodies
    def pose_bodies(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Shapes, pose families and intersection-checked poses for ``indices``.

        Returns phenotypes (B, 11), vertices (B, V, 3) and their unit normals (B, V, 3), Anny
        world, and the B family names. Version 1 draws no family (all "standing").
        """
        from fastmetro.data.synthetic.scene import sample_phenotypes

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
        from fastmetro.data.synthetic.scene import (
            sample_camera, sample_light, sample_occluder, sample_vertex_colours,
        )

        camera = sample_camera(rng, world_vertices, self.config.size)
        camera_vertices = camera.to_camera(world_vertices).astype(np.float32)
        colours = sample_vertex_colours(rng, self.body.regions, self.rest_height)
        light = sample_light(rng)
        background = self.backgrounds.sample(rng, self.config.size, self.config.backgrounds)
        occluder = sample_occluder(rng, camera_vertices) if self.config.occluders else None
        return SceneDraw(camera, camera_vertices, colours, (light,), background, occluder)

    def _scene_v2(self, rng: np.random.Generator, world_vertices: np.ndarray, family: str) -> SceneDraw:
        from fastmetro.data.synthetic.clothing import sample_clothing
        from fastmetro.data.synthetic.framing import sample_framed_camera
        from fastmetro.data.synthetic.lighting import sample_lights
        from fastmetro.data.synthetic.pose_families import FAMILIES
        from fastmetro.data.synthetic.scene import sample_occluder

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
    def render_sample(self, index: int, phenotypes: np.ndarray, world_vertices: np.ndarray,
                      world_normals: np.ndarray, family: str = "standing") -> dict:
        """Everything stored for sample ``index``: image, mask, label dict, label vertices."""
        rng = self.streams(index)["scene"]
        if self.config.generator_version == 1:
            scene = self._scene_v1(rng, world_vertices)
        else:
            scene = self._scene_v2(rng, world_vertices, family)
        camera = scene.camera
        result = self.renderer.render(
            scene.camera_vertices, self.body.faces, camera.intrinsics, color=scene.colours,
            background=scene.background, light=scene.lights,
            extra_meshes=(scene.occluder,) if scene.occluder is not None else (),
            normals=world_normals @ camera.rotation.T.astype(np.float32), with_depth=False,
        )
        label, label_vertices = self._label(scene, phenotypes)
        if self.config.generator_version >= 2:
            label["pose_family"] = family
            label["cut_by_border"] = int(scene.cut)
        return {"image": result.rgb, "mask": result.mask, "label": label, "vertices": label_vertices}

    def _label(self, scene: SceneDraw, phenotypes: np.ndarray) -> tuple[dict, np.ndarray]:
        """The METRO label dict of a sample (2D visibility = inside the image) and its label vertices."""
        from fastmetro.data.synthetic.framing import in_image

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
        from fastmetro.data.tsv import TSVDatasetWriter

        config = self.config
        # Temporaries of this shard left by a killed run (SIGKILL skips the writer's clean-up).
        for stale in config.out_dir.glob(f".{shard.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        masks_name = f"{shard.name}.masks.npy"
        masks = []
        with TSVDatasetWriter(
            config.out_dir, shard.name, image_format="jpg", jpeg_quality=config.jpeg_quality,
            vertices_dtype=config.vertices_dtype, extra_yaml={"masks": masks_name},
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


def read_masks(shard_yaml: str | os.PathLike, size: int) -> np.ndarray:
    """(N, size, size) bool body masks of a shard written by the generator."""
    import yaml

    shard_yaml = Path(shard_yaml)
    config = yaml.safe_load(shard_yaml.read_text())
    if not isinstance(config, dict) or "masks" not in config:
        raise FastMetroError(f"{shard_yaml}: no 'masks' entry (not a synthetic shard?)")
    packed = np.load(shard_yaml.parent / config["masks"], allow_pickle=False)
    return np.unpackbits(packed, axis=2, count=size).astype(bool)


# ---------------------------------------------------------------------------- orchestration
_WORKER: ShardMaker | None = None


def _init_worker(config: SynthConfig, label_mesh) -> None:
    global _WORKER
    # Each worker renders on one llvmpipe thread; the processes give the parallelism.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    _WORKER = ShardMaker(config, label_mesh)


def _run_shard(shard: Shard) -> tuple[str, int, dict, float, float]:
    assert _WORKER is not None
    started = time.time()
    _WORKER.make_shard(shard)
    stats = dict(_WORKER.stats)
    _WORKER.stats = {key: 0 for key in stats}
    return shard.name, shard.stop - shard.start, stats, started, time.time()


@dataclass
class SynthReport:
    """What a run did: shards written/skipped, images rendered, seconds, pose statistics.

    ``seconds`` is the rendering wall time, from the first shard started (after the workers
    loaded Anny and their GL contexts) to the last one finished; ``startup_seconds`` the loading.
    """

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    pose_rejections: int = 0
    pose_fallbacks: int = 0
    yamls: dict[str, Path] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def generate(config: SynthConfig, progress: bool = True, max_shards: int | None = None,
             maker: ShardMaker | None = None) -> SynthReport:
    """Render every missing shard of ``config`` and (re)write the composite train/test yamls.

    ``max_shards`` stops after writing that many shards (a partial run; rerun to finish).
    ``maker`` reuses an existing in-process :class:`ShardMaker` (tests, benchmarks).
    """
    from tqdm import tqdm

    from fastmetro.data.tsv import shard_is_complete

    validate(config)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    check_manifest(config)
    shards = plan_shards(config)
    report = SynthReport()
    todo = [shard for shard in shards if not shard_is_complete(config.out_dir, shard.name)]
    report.skipped = [shard.name for shard in shards if shard not in todo]
    if max_shards is not None:
        todo = todo[:max_shards]
    report.images = sum(shard.stop - shard.start for shard in todo)
    bar = tqdm(total=report.images, unit="img", desc="synth", disable=not progress, smoothing=0.05)
    try:
        if todo and (config.workers <= 1 or len(todo) <= 1):
            _render_here(config, todo, maker, report, bar)
        elif todo:
            _render_in_workers(config, todo, report, bar)
    finally:
        bar.close()
    _write_composites(config, shards, report)
    return report


def _render_here(config: SynthConfig, todo: list[Shard], maker: ShardMaker | None, report: SynthReport, bar) -> None:
    """Render ``todo`` in this process (loading a ShardMaker unless one is given)."""
    launched = time.time()
    if maker is None:
        maker = ShardMaker(config)
    else:
        maker.reconfigure(config)
        maker.stats = {key: 0 for key in maker.stats}
    first_start = time.time()
    for shard in todo:
        maker.make_shard(shard, on_sample=lambda: bar.update(1))
        report.written.append(shard.name)
    report.startup_seconds = first_start - launched
    report.seconds = time.time() - first_start
    report.pose_rejections += maker.stats["pose_rejections"]
    report.pose_fallbacks += maker.stats["pose_fallbacks"]


def _render_in_workers(config: SynthConfig, todo: list[Shard], report: SynthReport, bar) -> None:
    """Render ``todo`` in ``config.workers`` spawned processes (each loads Anny and a GL context)."""
    from fastmetro.data.synthetic.body import load_label_mesh

    # Loaded (or built, the first time) once here, not once per worker.
    label_mesh = load_label_mesh()
    launched = time.time()
    first_start, last_end = None, launched
    context = multiprocessing.get_context("spawn")  # no fork after torch/GL initialised
    workers = min(config.workers, len(todo))
    with context.Pool(workers, initializer=_init_worker, initargs=(config, label_mesh)) as pool:
        for name, count, stats, started, ended in pool.imap_unordered(_run_shard, todo):
            report.written.append(name)
            report.pose_rejections += stats["pose_rejections"]
            report.pose_fallbacks += stats["pose_fallbacks"]
            first_start = started if first_start is None else min(first_start, started)
            last_end = max(last_end, ended)
            bar.update(count)
    if first_start is not None:
        report.startup_seconds = first_start - launched
        report.seconds = last_end - first_start


def _write_composites(config: SynthConfig, shards: list[Shard], report: SynthReport) -> None:
    """When every shard is finished, (re)write train.yaml / test.yaml over them."""
    from fastmetro.data.tsv import shard_is_complete, write_composite_yaml

    if all(shard_is_complete(config.out_dir, shard.name) for shard in shards):
        for split in ("train", "test"):
            split_yamls = [config.out_dir / f"{s.name}.yaml" for s in shards if s.split == split]
            if split_yamls:
                report.yamls[split] = write_composite_yaml(config.out_dir / f"{split}.yaml", split_yamls)


def write_preview(yaml_path: str | os.PathLike, out_path: str | os.PathLike, tile: int = 256) -> Path:
    """See :func:`fastmetro.data.synthetic.preview.write_preview`."""
    from fastmetro.data.synthetic.preview import write_preview as write

    return write(yaml_path, out_path, tile)


def num_shards(config: SynthConfig) -> int:
    return len(plan_shards(config))


__all__ = [
    "SynthConfig", "SynthReport", "ShardMaker", "Shard", "generate", "plan_shards", "read_masks",
    "write_preview", "num_shards", "box_of", "sample_generators", "check_manifest", "read_manifest",
]
