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
projected mesh -- version 2: its part inside the image --, side = 1.2 x its larger extent, /200),
``2d_joints`` (K, 3) pixels + in-image flag (0 exactly for the joints outside the image),
``3d_joints`` (K, 4) camera coordinates in metres + confidence 1, ``has_2d_joints`` /
``has_3d_joints`` 1, ``has_smpl`` 0, ``joints_format`` "topology", ``camera`` intrinsics,
``has_vertices`` 1 with the row of the vertex side file, ``anny_phenotypes`` (the 11 values) and,
from generator version 2, ``pose_family`` and ``cut_by_border`` (1: a close-up that cuts the body).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastmetro.data.synthetic.body import load_label_mesh
from fastmetro.data.synthetic.config import (  # noqa: F401  (re-exported: the generator's API)
    GENERATOR_VERSION,
    MANIFEST_KEYS_ADDED_LATER,
    Shard,
    SynthConfig,
    check_manifest,
    plan_shards,
    pose_weights,
    read_manifest,
    sample_generators,
    validate,
)
from fastmetro.data.synthetic.preview import write_preview as write
from fastmetro.data.synthetic.shard_maker import BOX_PADDING, SceneDraw, ShardMaker, box_of  # noqa: F401
from fastmetro.data.tsv import shard_is_complete, write_composite_yaml
from fastmetro.errors import FastMetroError
from fastmetro.io import load_npy


def read_masks(shard_yaml: str | os.PathLike, size: int) -> np.ndarray:
    """(N, size, size) bool body masks of a shard written by the generator."""
    import yaml

    shard_yaml = Path(shard_yaml)
    config = yaml.safe_load(shard_yaml.read_text())
    if not isinstance(config, dict) or "masks" not in config:
        raise FastMetroError(f"{shard_yaml}: no 'masks' entry (not a synthetic shard?)")
    packed = load_npy(shard_yaml.parent / config["masks"], what="body masks")
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


def generate(
    config: SynthConfig, progress: bool = True, max_shards: int | None = None, maker: ShardMaker | None = None
) -> SynthReport:
    """Render every missing shard of ``config`` and (re)write the composite train/test yamls.

    ``max_shards`` stops after writing that many shards (a partial run; rerun to finish).
    ``maker`` reuses an existing in-process :class:`ShardMaker` (tests, benchmarks).
    """
    from tqdm import tqdm

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
    if all(shard_is_complete(config.out_dir, shard.name) for shard in shards):
        for split in ("train", "test"):
            split_yamls = [config.out_dir / f"{s.name}.yaml" for s in shards if s.split == split]
            if split_yamls:
                report.yamls[split] = write_composite_yaml(config.out_dir / f"{split}.yaml", split_yamls)


def write_preview(yaml_path: str | os.PathLike, out_path: str | os.PathLike, tile: int = 256) -> Path:
    """See :func:`fastmetro.data.synthetic.preview.write_preview`."""
    return write(yaml_path, out_path, tile)


def num_shards(config: SynthConfig) -> int:
    return len(plan_shards(config))


__all__ = [
    "SynthConfig",
    "SynthReport",
    "ShardMaker",
    "Shard",
    "generate",
    "plan_shards",
    "read_masks",
    "write_preview",
    "num_shards",
    "box_of",
    "sample_generators",
    "check_manifest",
    "read_manifest",
]
