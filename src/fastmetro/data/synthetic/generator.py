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

import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write

GENERATOR_VERSION = 1
# Settings added after version 1, with the value every earlier dataset was made with.
MANIFEST_KEYS_ADDED_LATER = {"backgrounds": "mixed"}
BOX_PADDING = 1.2
# LSP-14 order (R_Ankle, R_Knee, R_Hip, L_Hip, L_Knee, L_Ankle, R_Wrist, R_Elbow, R_Shoulder,
# L_Shoulder, L_Elbow, L_Wrist, Neck, Head): limbs drawn on the preview.
PREVIEW_BONES = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 12), (9, 12), (9, 10), (10, 11),
                 (12, 13), (2, 8), (3, 9))
RIGHT_JOINTS = {0, 1, 2, 6, 7, 8}
LEFT_JOINTS = {3, 4, 5, 9, 10, 11}


@dataclass(frozen=True)
class SynthConfig:
    """Settings of one synthetic dataset (everything but ``workers`` is fixed by synth.json)."""

    out_dir: Path
    num: int
    seed: int = 0
    size: int = 224
    workers: int = 1
    shard_size: int = 256
    test_fraction: float = 0.1
    batch_size: int = 32  # Anny forwards per call (amortises its per-call cost)
    max_pose_attempts: int = 10
    occluders: bool = True
    backgrounds: str = "mixed"  # scene.BACKGROUND_KINDS
    jpeg_quality: int = 90
    vertices_dtype: str = "float32"

    def manifest(self) -> dict:
        content = asdict(self)
        for transient in ("out_dir", "workers", "batch_size"):
            content.pop(transient)
        content["generator_version"] = GENERATOR_VERSION
        return content


@dataclass(frozen=True)
class Shard:
    name: str
    split: str
    start: int  # first sample index (global, inclusive)
    stop: int


def plan_shards(config: SynthConfig) -> list[Shard]:
    """Fixed shards: train = indices [0, n_train), test = [n_train, num), both cut every shard_size."""
    num_test = int(round(config.num * config.test_fraction))
    if config.num > 1 and config.test_fraction > 0:
        num_test = max(1, min(num_test, config.num - 1))
    num_train = config.num - num_test
    shards = []
    for split, start, stop in (("train", 0, num_train), ("test", num_train, config.num)):
        for number, first in enumerate(range(start, stop, config.shard_size)):
            shards.append(Shard(f"{split}_{number:05d}", split, first, min(first + config.shard_size, stop)))
    return shards


def sample_generators(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent streams per sample, so a retried pose never shifts the camera draws."""
    return {name: np.random.default_rng([seed, index, stream]) for stream, name in enumerate(("shape", "pose", "scene"))}


def box_of(points_2d: np.ndarray) -> tuple[list[float], float]:
    """(center [x, y] px, scale = padded box side / 200) of a set of image points (N, 2)."""
    low, high = points_2d.min(0), points_2d.max(0)
    side = float((high - low).max()) * BOX_PADDING
    return [float(v) for v in (low + high) / 2.0], side / 200.0


class ShardMaker:
    """Renders shards. One per process: it owns an Anny model and an OpenGL context."""

    def __init__(self, config: SynthConfig, label_mesh=None):
        from fastmetro.data.synthetic.body import AnnyBody
        from fastmetro.data.synthetic.scene import Backgrounds
        from fastmetro.render import Renderer

        self.config = config
        self.body = AnnyBody(label_mesh)
        self.renderer = Renderer(config.size, config.size)
        self.backgrounds = Backgrounds()
        rest = self.body.forward(np.full((1, 11), 0.5), np.tile(np.eye(4), (1, len(self.body.bone_labels), 1, 1)))
        self.rest_height = rest[0, :, 2]
        self.stats = {"pose_rejections": 0, "pose_fallbacks": 0}
        import trimesh  # noqa: F401  (occluder meshes; imported now, not inside the first shard)

    def reconfigure(self, config: SynthConfig) -> "ShardMaker":
        """Reuse this maker (its loaded Anny model) for another dataset's settings."""
        from fastmetro.render import Renderer

        if config.size != self.config.size:
            self.renderer.release()
            self.renderer = Renderer(config.size, config.size)
        self.config = config
        return self

    # ------------------------------------------------------------------ bodies
    def pose_bodies(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shapes and intersection-checked poses for ``indices``.

        Returns phenotypes (B, 11), vertices (B, V, 3) and their unit normals (B, V, 3), Anny world.
        """
        body = self.body
        streams = [sample_generators(self.config.seed, index) for index in indices]
        from fastmetro.data.synthetic.scene import sample_phenotypes

        phenotypes = np.stack([sample_phenotypes(s["shape"]) for s in streams])
        rest = body.rest(phenotypes)
        vertices = np.zeros((len(indices), body.num_vertices, 3), np.float32)
        normals = np.zeros_like(vertices)
        pending = list(range(len(indices)))
        for _attempt in range(self.config.max_pose_attempts):
            if not pending:
                break
            poses = np.stack([body.pose_sampler.sample(streams[i]["pose"]) for i in pending])
            posed = body.pose(rest, pending, poses)
            still_pending = []
            for row, sample in enumerate(pending):
                posed_normals = body.normals(posed[row])
                if body.intersection_test.accepts(posed[row], posed_normals):
                    vertices[sample], normals[sample] = posed[row], posed_normals
                else:
                    still_pending.append(sample)
            self.stats["pose_rejections"] += len(still_pending)
            pending = still_pending
        if pending:  # never found a clean pose: the rest (A-) pose is always clean
            self.stats["pose_fallbacks"] += len(pending)
            rest_pose = np.tile(np.eye(4, dtype=np.float32), (len(pending), len(body.bone_labels), 1, 1))
            vertices[pending] = body.pose(rest, pending, rest_pose)
            normals[pending] = [body.normals(v) for v in vertices[pending]]
        return phenotypes, vertices, normals

    # ------------------------------------------------------------------ one sample
    def render_sample(self, index: int, phenotypes: np.ndarray, world_vertices: np.ndarray,
                      world_normals: np.ndarray) -> dict:
        """Everything stored for sample ``index``: image, mask, label dict, label vertices."""
        from fastmetro.data.synthetic.scene import (
            sample_camera, sample_light, sample_occluder, sample_vertex_colours,
        )

        rng = sample_generators(self.config.seed, index)["scene"]
        size = self.config.size
        camera = sample_camera(rng, world_vertices, size)
        camera_vertices = camera.to_camera(world_vertices).astype(np.float32)
        colours = sample_vertex_colours(rng, self.body.regions, self.rest_height)
        light = sample_light(rng)
        background = self.backgrounds.sample(rng, size, self.config.backgrounds)
        occluder = sample_occluder(rng, camera_vertices) if self.config.occluders else None
        result = self.renderer.render(
            camera_vertices, self.body.faces, camera.intrinsics, color=colours, background=background,
            light=light, extra_meshes=(occluder,) if occluder is not None else (),
            normals=world_normals @ camera.rotation.T.astype(np.float32), with_depth=False,
        )
        label_vertices, joints = self.body.labels(camera_vertices.astype(np.float64))
        joints_2d = camera.project(joints)
        inside = (joints_2d >= -0.5).all(1) & (joints_2d <= size - 0.5).all(1)
        center, scale = box_of(camera.project(label_vertices))
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
        return {"image": result.rgb, "mask": result.mask, "label": label, "vertices": label_vertices}

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
                phenotypes, vertices, normals = self.pose_bodies(indices)
                for row, index in enumerate(indices):
                    sample = self.render_sample(index, phenotypes[row], vertices[row], normals[row])
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


def check_manifest(config: SynthConfig) -> None:
    """Write synth.json, or check that an existing one matches (a resumed run must not mix settings)."""
    path = config.out_dir / "synth.json"
    wanted = config.manifest()
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise FastMetroError(f"{path}: not valid JSON (delete it, or use another --out)") from None
        existing = {**MANIFEST_KEYS_ADDED_LATER, **existing}
        differences = sorted(k for k in set(wanted) | set(existing) if wanted.get(k) != existing.get(k))
        if differences:
            detail = ", ".join(f"{k}={existing.get(k)!r} (now {wanted.get(k)!r})" for k in differences)
            raise FastMetroError(f"{path}: the folder holds a dataset made with other settings: {detail}")
        return
    with atomic_write(path, "w") as handle:
        json.dump(wanted, handle, indent=2)


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

    from fastmetro.data.synthetic.scene import BACKGROUND_KINDS
    from fastmetro.data.tsv import shard_is_complete, write_composite_yaml

    if config.num < 1:
        raise FastMetroError(f"{config.out_dir}: --num must be at least 1, got {config.num}")
    if config.size < 16:
        raise FastMetroError(f"{config.out_dir}: --size must be at least 16 pixels, got {config.size}")
    if not 0.0 <= config.test_fraction < 1.0:
        raise FastMetroError(f"{config.out_dir}: test fraction must be in [0, 1), got {config.test_fraction}")
    if config.backgrounds not in BACKGROUND_KINDS:
        raise FastMetroError(
            f"{config.out_dir}: backgrounds must be one of {BACKGROUND_KINDS}, got {config.backgrounds!r}"
        )
    config.out_dir.mkdir(parents=True, exist_ok=True)
    check_manifest(config)
    shards = plan_shards(config)
    report = SynthReport()
    todo = []
    for shard in shards:
        (report.skipped if shard_is_complete(config.out_dir, shard.name) else todo).append(shard)
    report.skipped = [shard.name for shard in report.skipped]
    if max_shards is not None:
        todo = todo[:max_shards]
    total = sum(shard.stop - shard.start for shard in todo)
    bar = tqdm(total=total, unit="img", desc="synth", disable=not progress, smoothing=0.05)
    launched = time.time()
    first_start, last_end = None, launched
    try:
        if not todo:
            pass
        elif config.workers <= 1 or len(todo) <= 1:
            if maker is None:
                maker = ShardMaker(config)
            else:
                maker.reconfigure(config)
                maker.stats = {key: 0 for key in maker.stats}
            first_start = time.time()
            for shard in todo:
                maker.make_shard(shard, on_sample=lambda: bar.update(1))
                report.written.append(shard.name)
            last_end = time.time()
            report.pose_rejections += maker.stats["pose_rejections"]
            report.pose_fallbacks += maker.stats["pose_fallbacks"]
        else:
            from fastmetro.data.synthetic.body import load_label_mesh

            # Loaded (or built, the first time) once here, not once per worker.
            label_mesh = load_label_mesh()
            launched = time.time()
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
    finally:
        bar.close()
    if first_start is not None:
        report.startup_seconds = first_start - launched
        report.seconds = last_end - first_start
    report.images = total
    if all(shard_is_complete(config.out_dir, shard.name) for shard in shards):
        for split in ("train", "test"):
            split_yamls = [config.out_dir / f"{s.name}.yaml" for s in shards if s.split == split]
            if split_yamls:
                report.yamls[split] = write_composite_yaml(config.out_dir / f"{split}.yaml", split_yamls)
    return report


def write_preview(yaml_path: str | os.PathLike, out_path: str | os.PathLike, tile: int = 256) -> Path:
    """A 3x3 contact sheet PNG of the first 9 rows of a dataset, 2D joints and limbs drawn on."""
    import cv2

    from fastmetro.data.tsv import TSVDataset

    dataset = TSVDataset(yaml_path)
    if len(dataset) == 0:
        raise FastMetroError(f"{yaml_path}: empty dataset, nothing to preview")
    sheet = np.zeros((3 * tile, 3 * tile, 3), np.uint8)
    for cell in range(min(9, len(dataset))):
        row = dataset[cell]
        image = np.ascontiguousarray(row.image)
        zoom = tile / max(image.shape[:2])
        image = cv2.resize(image, (round(image.shape[1] * zoom), round(image.shape[0] * zoom)),
                           interpolation=cv2.INTER_LINEAR)
        joints = np.asarray(row.label["2d_joints"], dtype=np.float64)
        points = (joints[:, :2] + 0.5) * zoom - 0.5  # pixel centres scale about the image corner

        def at(j):
            return tuple(int(round(c)) for c in points[j])

        if len(points) == 14:
            for a, b in PREVIEW_BONES:
                colour = (255, 60, 60) if {a, b} <= RIGHT_JOINTS else (60, 120, 255) if {a, b} <= LEFT_JOINTS else (60, 220, 60)
                cv2.line(image, at(a), at(b), colour, 2, cv2.LINE_AA)
        for j in range(len(points)):
            cv2.circle(image, at(j), 3, (255, 255, 0), -1, cv2.LINE_AA)
        top, left = (cell // 3) * tile, (cell % 3) * tile
        sheet[top:top + image.shape[0], left:left + image.shape[1]] = image
    out_path = Path(out_path)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FastMetroError(f"{out_path}: PNG encoding failed")
    with atomic_write(out_path) as handle:
        handle.write(encoded.tobytes())
    return out_path


def num_shards(config: SynthConfig) -> int:
    return len(plan_shards(config))


__all__ = [
    "SynthConfig", "SynthReport", "ShardMaker", "Shard", "generate", "plan_shards", "read_masks",
    "write_preview", "num_shards", "box_of", "sample_generators",
]
