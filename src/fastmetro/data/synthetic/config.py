"""Settings of a synthetic dataset, their manifest (synth.json), and the fixed shard plan.

Generator versions: **1** (the first release: the everyday standing pose sampler, one light,
flat clothing colours, whole bodies in view, all 15 scikit-image photos) and **2** (pose
families, several coloured lights, patterned clothing, steep / close / cut cameras, train and
generalisation splits with disjoint sources). A folder keeps the version it was started with:
rerunning ``fastmetro synth`` on a version-1 folder resumes it with version-1 samples.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fastmetro.conventions import IMAGE_SIZE
from fastmetro.data.synthetic.pose_mix import parse_pose_mix
from fastmetro.data.synthetic.scene import BACKGROUND_KINDS
from fastmetro.data.synthetic.splits import get_split, split_pose_weights
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write

GENERATOR_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
# Settings added after version 1, with the value every earlier dataset was made with.
MANIFEST_KEYS_ADDED_LATER = {"backgrounds": "mixed", "poses": "standing", "split": "train"}
# Settings that a rerun without the option takes from the folder (they changed default in version 2).
RESUMED_FROM_FOLDER = ("poses", "split", "generator_version")
STREAMS = ("shape", "pose", "scene")


@dataclass(frozen=True)
class SynthConfig:
    """Settings of one synthetic dataset (everything but ``workers`` is fixed by synth.json)."""

    out_dir: Path
    num: int
    seed: int = 0
    size: int = IMAGE_SIZE
    workers: int = 1
    shard_size: int = 256
    test_fraction: float = 0.1
    batch_size: int = 32  # Anny forwards per call (amortises its per-call cost)
    max_pose_attempts: int = 10
    occluders: bool = True
    backgrounds: str = "mixed"  # scene.BACKGROUND_KINDS
    jpeg_quality: int = 90
    vertices_dtype: str = "float32"
    poses: str = "mixed"  # pose_mix.parse_pose_mix
    split: str = "train"  # splits.SPLITS
    generator_version: int = GENERATOR_VERSION

    def manifest(self) -> dict:
        content = asdict(self)
        for transient in ("out_dir", "workers", "batch_size"):
            content.pop(transient)
        return content


def validate(config: SynthConfig) -> None:
    """One-line FastMetroError for settings no dataset can be made with."""
    where = config.out_dir
    if config.num < 1:
        raise FastMetroError(f"{where}: --num must be at least 1, got {config.num}")
    if config.size < 16:
        raise FastMetroError(f"{where}: --size must be at least 16 pixels, got {config.size}")
    if not 0.0 <= config.test_fraction < 1.0:
        raise FastMetroError(f"{where}: test fraction must be in [0, 1), got {config.test_fraction}")
    if config.backgrounds not in BACKGROUND_KINDS:
        raise FastMetroError(f"{where}: backgrounds must be one of {BACKGROUND_KINDS}, got {config.backgrounds!r}")
    if config.generator_version not in SUPPORTED_VERSIONS:
        raise FastMetroError(
            f"{where}: generator version {config.generator_version} is not supported "
            f"(this fastmetro makes {SUPPORTED_VERSIONS})"
        )
    if config.generator_version == 1 and (config.poses, config.split) != ("standing", "train"):
        raise FastMetroError(
            f"{where}: a generator-version-1 dataset has only standing poses and the train "
            f"split (got poses={config.poses!r}, split={config.split!r})"
        )
    split_pose_weights(get_split(config.split), parse_pose_mix(config.poses), config.poses == "mixed")


def pose_weights(config: SynthConfig) -> dict[str, float]:
    """{family: weight} that ``config`` draws from (its --poses within its split)."""
    return split_pose_weights(get_split(config.split), parse_pose_mix(config.poses), config.poses == "mixed")


def read_manifest(out_dir: Path) -> dict | None:
    """The folder's synth.json with settings added later filled in, or None when there is none."""
    path = Path(out_dir) / "synth.json"
    if not path.is_file():
        return None
    try:
        existing = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise FastMetroError(f"{path}: not valid JSON (delete it, or use another --out)") from None
    if not isinstance(existing, dict):
        raise FastMetroError(f"{path}: not a synth.json manifest (delete it, or use another --out)")
    return {**MANIFEST_KEYS_ADDED_LATER, **existing}


def check_manifest(config: SynthConfig) -> None:
    """Write synth.json, or check that an existing one matches (a resumed run must not mix settings)."""
    path = config.out_dir / "synth.json"
    wanted = config.manifest()
    existing = read_manifest(config.out_dir)
    if existing is not None:
        differences = sorted(k for k in set(wanted) | set(existing) if wanted.get(k) != existing.get(k))
        if differences:
            detail = ", ".join(f"{k}={existing.get(k)!r} (now {wanted.get(k)!r})" for k in differences)
            raise FastMetroError(f"{path}: the folder holds a dataset made with other settings: {detail}")
        return
    with atomic_write(path, "w") as handle:
        json.dump(wanted, handle, indent=2)


@dataclass(frozen=True)
class Shard:
    name: str
    split: str  # "train" or "test": the composite yaml it belongs to
    start: int  # first sample index (global, inclusive)
    stop: int


def plan_shards(config: SynthConfig) -> list[Shard]:
    """Fixed shards: train = indices [0, n_train), test = [n_train, num), both cut every shard_size.

    The generalisation split is a test set: all of it goes to ``test``.
    """
    if config.split == "generalisation":
        num_test = config.num
    else:
        num_test = int(round(config.num * config.test_fraction))
        if config.num > 1 and config.test_fraction > 0:
            num_test = max(1, min(num_test, config.num - 1))
    num_train = config.num - num_test
    shards = []
    for split, start, stop in (("train", 0, num_train), ("test", num_train, config.num)):
        for number, first in enumerate(range(start, stop, config.shard_size)):
            shards.append(Shard(f"{split}_{number:05d}", split, first, min(first + config.shard_size, stop)))
    return shards


def sample_generators(seed: int, index: int, salt: tuple[int, ...] = ()) -> dict[str, np.random.Generator]:
    """Independent streams per sample, so a retried pose never shifts the camera draws.

    ``salt`` (the split's) makes another split's sample ``index`` independent of this one's.
    """
    return {name: np.random.default_rng([seed, index, stream, *salt]) for stream, name in enumerate(STREAMS)}
