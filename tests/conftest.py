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
