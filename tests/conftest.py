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


# -- the synthetic world (b2s_core.synth): a tiny dataset in every real format, made once per session --
@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Root of a tiny synthetic dataset (2 scenes x 3 key frames, 20 Hz sweeps, 160x90 images).

    Layout (docs/synth.md): ``synth_manifest.json`` (read it with ``b2s_core.synth.load_manifest``),
    ``nuscenes/`` (NuScenes('v1.0-mini', root/'nuscenes')), ``occ3d/gts/``, ``openoccupancy/``,
    ``nuplan/``, ``openscene/`` and ``ground_truth/<scene>/<key>.npz`` (exact truth, see
    ``b2s_core.synth.load_ground_truth``).
    """
    from b2s_core.synth import FORMATS, write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, scenes=2, frames=3, formats=FORMATS, seed=0, image_size=(160, 90))  # all five formats
    return root
