"""Packaging: every declared dependency is used and pinned for testing, torch is not capped, and the
optional extras (viz3d: open3d, tensorboard) end in one warning naming the extra when missing."""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.grids import VoxelGrid
from b2s_core.occfile import OccWriter
from b2s_core.records import OccFrame
from b2s_core.taxonomy import OCC3D
from b2s_core.train.logging import MetricsLog

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# Distribution -> the module our code imports it as (tensorboard: through torch's writer).
IMPORT_NAME = {
    "torch": "torch", "numpy": "numpy", "typer": "typer", "rich": "rich", "h5py": "h5py", "hdf5plugin": "hdf5plugin",
    "nuscenes-devkit": "nuscenes", "pillow": "PIL", "pyyaml": "yaml", "tomli": "tomli", "matplotlib": "matplotlib",
    "open3d": "open3d", "tensorboard": "torch.utils.tensorboard", "ray": "ray",
}


def _requirements() -> dict[str, Requirement]:
    """The package's dependencies and those of its user-facing extras (not dev), by lower-case name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for name, reqs in project["optional-dependencies"].items() if name != "dev" for r in reqs]
    return {req.name.lower(): req for req in map(Requirement, project["dependencies"] + extras)}


def _imported_modules() -> set[str]:
    """Every module (and each parent package of it) imported by the installed packages' sources."""
    names = set()
    for package in ("b2s_core", "b2s_cli", "converters"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found = [node.module]
                else:
                    continue
                for name in found:
                    parts = name.split(".")
                    names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def test_every_dependency_is_imported_somewhere():
    requirements, imported = _requirements(), _imported_modules()
    assert set(requirements) <= set(IMPORT_NAME), f"add the import name of {set(requirements) - set(IMPORT_NAME)}"
    unused = sorted(name for name in requirements if IMPORT_NAME[name] not in imported)
    assert not unused, f"declared but never imported: {unused}"


def test_constraints_pin_tested_versions_inside_the_declared_ranges_and_torch_is_not_capped():
    requirements = _requirements()
    torch = requirements["torch"].specifier
    assert not any(spec.operator in ("<", "<=", "==", "~=", "===") for spec in torch), torch
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower()] = spec.version
    assert set(requirements) - {"tomli"} <= set(pins), set(requirements) - set(pins)  # tomli: Python 3.10 only
    for name, version in pins.items():
        if name in requirements:
            assert requirements[name].specifier.contains(version), (name, version, requirements[name].specifier)


def _tiny_scene(folder: Path) -> Path:
    """(20, 20, 4) grid, one frame with a block of cars, no cameras."""
    grid = VoxelGrid((-4.0, -4.0, -1.0), (4.0, 4.0, 0.6), (0.4, 0.4, 0.4), "tiny")
    labels = np.full(grid.shape, OCC3D.free_index, np.uint8)
    labels[8:12, 8:12, 1:3] = OCC3D.class_names.index("car")
    frame = OccFrame(occupancy=labels != OCC3D.free_index, semantics=labels, scene="s", token="t0", timestamp=0,
                     global_from_ego=np.eye(4), cameras=[])
    with OccWriter(folder / "data.h5", grid=grid, taxonomy=OCC3D, source="synthetic") as writer:
        writer.write_scene("s", [frame])
    return folder / "data.h5"


def test_visualize_without_open3d_skips_3d_with_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)  # `import open3d` now fails as when it is not installed
    data = _tiny_scene(tmp_path)
    result = CliRunner().invoke(app, ["visualize", "s", "--data", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "3D views skipped" in line]
    assert len(lines) == 1 and "b2s[viz3d]" in lines[0] and "open3d is not installed" in lines[0], result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s_bev.gif", "s_frame000_bev.png"]  # no 3D picture


def test_metrics_log_without_tensorboard_warns_once_and_still_logs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # in case an earlier test imported it
    with pytest.warns(UserWarning, match=r"no TensorBoard logs: .*pip install 'b2s\[tensorboard\]'") as caught:
        log = MetricsLog(tmp_path)
        log.log("train", {"step": 1, "loss": 0.5})
        log.log("train", {"step": 2, "loss": 0.25})
        log.close()
    assert sum("TensorBoard" in str(w.message) for w in caught) == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "tensorboard").exists()


def test_metrics_log_writes_tensorboard_events_with_the_extra(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="the tensorboard extra is not installed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = MetricsLog(tmp_path)
    assert not [w for w in caught if "TensorBoard" in str(w.message)]
    log.log("train", {"step": 1, "loss": 0.5})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
