"""Shared fixtures. Real sample data live in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("B2S_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set B2S_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def occ3d_sample(shared_data: Path) -> Path:
    path = shared_data / "occ3d-sample" / "labels.npz"
    if not path.is_file():
        pytest.skip(f"Occ3D sample not found at {path}")
    return path


@pytest.fixture(scope="session")
def nuscenes_keyframe(shared_data: Path) -> Path:
    path = shared_data / "nuscenes-keyframe"
    if not (path / "frame.json").is_file():
        pytest.skip(f"nuScenes key frame not found at {path}")
    return path
