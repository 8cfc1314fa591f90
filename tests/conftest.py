"""Shared test fixtures: where ../shared lives, and the one Anny cache all tests share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A hub lookup must fail fast in tests (no network here).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("FASTMETRO_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DIR} (set FASTMETRO_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def smpl_dir(shared_dir) -> Path:
    return shared_dir / "data" / "smpl"


@pytest.fixture(scope="session")
def mano_dir(shared_dir) -> Path:
    return shared_dir / "data" / "mano"


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    return shared_dir / "reference"


@pytest.fixture(scope="session")
def smpl_topology(smpl_dir):
    from fastmetro import topology

    return topology.load("smpl", smpl_dir)


@pytest.fixture(scope="session")
def mano_topology(mano_dir):
    from fastmetro import topology

    return topology.load("mano", mano_dir)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A 16-image synthetic Anny dataset (64 px; 12 train in 3 shards + 4 test), made once.

    Returns a SimpleNamespace: ``config`` (SynthConfig), ``report`` (SynthReport), ``train_yaml``,
    ``test_yaml``, ``maker`` (the loaded ShardMaker, reusable via ``generate(..., maker=)``).
    """
    from types import SimpleNamespace

    from fastmetro.data.synthetic.generator import ShardMaker, SynthConfig, generate

    config = SynthConfig(
        out_dir=tmp_path_factory.mktemp("synthetic"), num=16, seed=7, size=64, shard_size=4, test_fraction=0.25
    )
    maker = ShardMaker(config)
    report = generate(config, progress=False, maker=maker)
    return SimpleNamespace(
        config=config,
        report=report,
        maker=maker,
        train_yaml=report.yamls["train"],
        test_yaml=report.yamls["test"],
    )
