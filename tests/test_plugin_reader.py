"""Plug-in readers (converters/readers/plugins.py) with the example under examples/plugin_reader: a toy fleet
converted and built through ``--source module:Class`` and through a ``b2s.readers`` entry point,
worker processes included; bad specs and incomplete readers end in one line; the resume guard
tells readers apart."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from b2s_cli.commands import build_binary as build_command
from b2s_cli.commands import convert as convert_command
from b2s_core.grids import GRID_PRESETS, SOURCE_GRIDS, get_grid
from b2s_core.occfile import OccDataset
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.build_binary import BuildBinaryJob
from converters.jobs.convert import ConvertConfig, convert, default_grid
from converters.readers.plugins import installed_readers, reader_class, resolve_source

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugin_reader"
SPEC = "toy_fleet.reader:ToyFleetReader"
VARIANTS = "b2s_test_plugin_variants"  # a module of deliberately incomplete readers, written by the fixture

VARIANTS_SOURCE = '''
from b2s_core.taxonomy import OCC3D, Taxonomy
from converters.readers.base import SceneReader
from toy_fleet.reader import ToyFleetReader
from toy_fleet.reader import ToyFleetReader as Alias  # a re-export: the same reader under another name


class Other(ToyFleetReader):
    """Reads the same files, but is another reader: a run it did not start must not resume with it."""


class NoCameras(ToyFleetReader):
    def __init__(self, dataroot, **options):
        super().__init__(dataroot, **options)
        del self.camera_names


class OwnTaxonomy(ToyFleetReader):
    def __init__(self, dataroot, **options):
        super().__init__(dataroot, **options)
        self.taxonomy = Taxonomy("fleet", ("free", "thing"), 0, (1,), ((0, 0, 0), (9, 9, 9)))


class NoEgoBody(ToyFleetReader):
    ego_body = None


class BadGrid(ToyFleetReader):
    default_grid = "hexagonal"


class Bare(SceneReader):
    """Only what has no default: the two methods and camera_names."""

    def __init__(self, dataroot):
        self.camera_names = []

    def scene_names(self):
        return []

    def read_scene(self, name, on_error=None):
        return iter(())


class NotAReader:
    pass
'''


@pytest.fixture(scope="module")
def plugin_paths(tmp_path_factory):
    """The example package, a fake installed distribution declaring two b2s.readers entry points
    (``toyfleet`` and a broken ``brokenfleet``) and the variants module, on sys.path."""
    root = tmp_path_factory.mktemp("plugins")
    dist = root / "site" / "b2s_toy_fleet-0.1.0.dist-info"  # what pip writes when installing the example
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: b2s-toy-fleet\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[b2s.readers]\ntoyfleet = {SPEC}\nbrokenfleet = toy_fleet.reader:Missing\n")
    (root / "modules").mkdir()
    (root / "modules" / f"{VARIANTS}.py").write_text(VARIANTS_SOURCE)
    (root / "modules" / "b2s_test_broken_import.py").write_text("import b2s_no_such_dependency\n")
    (root / "modules" / "b2s_test_failing_import.py").write_text("raise RuntimeError('licence server unreachable')\n")
    added = [str(EXAMPLE), str(root / "site"), str(root / "modules")]
    sys.path[:0] = added
    yield root
    for path in added:
        sys.path.remove(path)
    for name in [m for m in sys.modules if m.split(".")[0] in ("toy_fleet", VARIANTS)]:
        del sys.modules[name]
    reader_class.cache_clear()


@pytest.fixture()
def toy(plugin_paths, tmp_path):
    from toy_fleet.make_toy import write_toy_dataset

    root = tmp_path / "toy"
    return root, write_toy_dataset(root, drives=2, frames=3)


def _app(command) -> typer.Typer:
    app = typer.Typer()
    app.command("run")(command)
    app.command("unused")(lambda: None)  # two commands keep Typer from collapsing into a single-command app
    return app


def _check_against_truth(out: Path, root: Path, truth: dict) -> None:
    """Every toy frame is in ``out`` as the generator made it: poses, times, points, cameras, images."""
    data = OccDataset(out)
    assert data.source == SPEC and data.camera_names == ["front", "left"]
    assert data.grid.same_geometry(get_grid("-20,-20,-2,20,20,4.4:0.4")) and data.taxonomy.name == "occ3d"
    expected = [(drive, f) for drive, frames in truth.items() for f in frames]
    assert data.tokens() == [f["token"] for _, f in expected]
    for i, (drive, want) in enumerate(expected):
        frame = data[i]
        assert frame.scene == drive and frame.timestamp == want["timestamp"]
        np.testing.assert_allclose(frame.global_from_ego, want["global_from_ego"], atol=1e-12)
        np.testing.assert_allclose(frame.points, want["points_ego"], atol=1e-4)  # float32 through the LiDAR frame
        assert frame.occupancy.sum() == data.grid.voxelize(want["points_ego"]).sum() > 1000
        assert data.image(i, "left") == (root / "drives" / drive / f"{want['token'].split('_')[-1]}_left.png").read_bytes()


# -- the acceptance: b2s convert --workers 2 on a toy dataset --------------------------------------
def test_cli_convert_with_two_workers_through_module_spec(toy, tmp_path):
    root, truth = toy
    out = tmp_path / "toy.h5"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")])),
               COLUMNS="200")  # the summary on one line
    result = subprocess.run([sys.executable, "-m", "b2s_cli.app", "convert", "--source", SPEC, "--dataroot", str(root),
                             "--out", str(out), "--workers", "2"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 2 scenes (0 resumed)" in result.stdout and "6 frames converted" in result.stdout
    _check_against_truth(out, root, truth)


def test_spawned_workers_recreate_the_reader_from_its_spec(toy, tmp_path, monkeypatch):
    # A spawned worker inherits nothing: it can only open the reader from the task's source id.
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    root, truth = toy
    summary = convert(ConvertConfig(source=SPEC, dataroot=root, out=tmp_path / "toy.h5", workers=2))
    assert (summary.scenes, summary.frames, summary.skipped) == (2, 6, [])
    _check_against_truth(tmp_path / "toy.h5", root, truth)


# -- the entry point ------------------------------------------------------------------------------
def test_entry_point_name_converts_and_builds(toy, tmp_path):
    root, truth = toy
    assert installed_readers()["toyfleet"] == [SPEC] and resolve_source("toyfleet") == SPEC
    out = tmp_path / "toy.h5"
    result = CliRunner().invoke(_app(convert_command.convert), ["run", "--source", "toyfleet", "--dataroot", str(root),
                                                                "--out", str(out)])
    assert result.exit_code == 0, result.output
    _check_against_truth(out, root, truth)

    built = tmp_path / "binary.h5"
    result = CliRunner().invoke(_app(build_command.build_binary), ["run", "--source", "toyfleet", "--dataroot", str(root),
                                                                   "--out", str(built)])
    assert result.exit_code == 0, result.output
    data, converted = OccDataset(built), OccDataset(out)
    assert len(data) == 6 and data.taxonomy.name == "binary" and data.source == SPEC
    for i in range(len(data)):
        frame, key_sweep = data[i], converted[i]
        assert frame.mask_lidar.sum() > 10_000 and frame.mask_camera.sum() > 1000
        # The key sweep's points stand in the built occupancy, except the ego body's: the roof rack's
        # returns, above the built-in sources' bodies, are dropped only by ToyFleetReader.ego_body.
        body = np.all((key_sweep.points >= (-1.0, -1.0, -0.3)) & (key_sweep.points <= (4.0, 1.0, 2.4)), axis=1)
        roof = data.grid.voxelize(key_sweep.points[body & (key_sweep.points[:, 2] > 2.05)])
        outside = data.grid.voxelize(key_sweep.points[~body])
        assert roof.sum() >= 3 and not (frame.occupancy & roof).any()
        # Points on the objects come back pasted from their track's model: one on a voxel face may
        # round into the neighbour (the parked car's roof lies exactly on a layer boundary).
        assert (frame.occupancy & outside).sum() >= 0.98 * outside.sum()


# -- bad specs: one line, exit 2 --------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("toyflet", "toyflet: unknown source; use one of nuscenes, nuplan, openscene (built in), brokenfleet, toyfleet "
                "(installed under b2s.readers) or package.module:Class"),
    ("b2s_no_such_module:Reader", "b2s_no_such_module:Reader: module b2s_no_such_module not found; install its package "
                                  "or put its folder on PYTHONPATH"),
    ("b2s_test_broken_import:Reader", "b2s_test_broken_import:Reader: importing b2s_test_broken_import failed: "
                                      "ModuleNotFoundError: No module named 'b2s_no_such_dependency'"),
    ("b2s_test_failing_import:Reader", "importing b2s_test_failing_import failed: RuntimeError: licence server unreachable"),
    ("toy_fleet.reader:Missing", "toy_fleet.reader:Missing: module 'toy_fleet.reader' has no attribute 'Missing'"),
    ("brokenfleet", "entry point brokenfleet = toy_fleet.reader:Missing of b2s.readers: module 'toy_fleet.reader' has no "
                    "attribute 'Missing'"),
    (f"{VARIANTS}:NotAReader", "NotAReader is not a subclass of converters.readers.base.SceneReader"),
    ("toy_fleet.make_toy:main", "main is a function, not a subclass of converters.readers.base.SceneReader"),
    ("converters.readers.base:SceneReader", "SceneReader does not implement read_scene, scene_names"),
    (f"{VARIANTS}:BadGrid", "BadGrid.default_grid 'hexagonal' is not a grid: unknown grid 'hexagonal'"),
    ("__main__:Reader", "a reader defined in __main__ cannot be re-created in worker processes"),
    ("toy_fleet.reader:", "a reader is named package.module:Class"),
])
@pytest.mark.parametrize("command", [convert_command.convert, build_command.build_binary])
def test_bad_source_is_one_line_usage_error(plugin_paths, tmp_path, command, value, message):
    result = CliRunner(env={"COLUMNS": "400"}).invoke(_app(command), ["run", "--source", value, "--dataroot", str(tmp_path),
                                                                      "--out", str(tmp_path / "o.h5")])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if "--source" in line and "Invalid value" in line]
    assert message in line, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.h5").exists()


# -- what a reader must provide ------------------------------------------------------------------
def test_incomplete_readers_are_refused_in_one_line(toy, tmp_path):
    root, _ = toy
    with pytest.raises(ConverterError, match=rf"^{VARIANTS}:NoCameras: camera_names must be a list of camera names"):
        open_reader(f"{VARIANTS}:NoCameras", root)
    with pytest.raises(ConverterError, match=r"taxonomy fleet is not one a b2s file can record; use one of .*occ3d"):
        open_reader(f"{VARIANTS}:OwnTaxonomy", root)
    with pytest.raises(ConverterError, match=r"build-binary needs the reader's ego_body"):
        BuildBinaryJob(source=f"{VARIANTS}:NoEgoBody", dataroot=root, out=tmp_path / "b.h5")
    with pytest.raises(ConverterError, match=rf"^{SPEC}: the reader takes no --split$"):
        open_reader(SPEC, root, split="mini")
    with pytest.raises(ConverterError, match=r"the reader takes no --version, --labels$"):
        open_reader(SPEC, root, labels=f"occ3d:{root}", version="v1")
    assert open_reader(SPEC, root, scenes=["drive-001"]).scene_names() == ["drive-001"]
    # The CLI: a reader that opens badly ends in "error: <one line>", exit 1.
    result = CliRunner().invoke(_app(convert_command.convert), ["run", "--source", f"{VARIANTS}:NoCameras",
                                                                "--dataroot", str(root), "--out", str(tmp_path / "o.h5")])
    (line,) = result.output.strip().splitlines()
    assert result.exit_code == 1 and line.startswith(f"error: {VARIANTS}:NoCameras: camera_names must be")


def test_defaults_fill_what_a_reader_leaves_out(plugin_paths, tmp_path):
    reader = open_reader(f"{VARIANTS}:Bare", tmp_path)
    assert reader.image_root == tmp_path and reader.taxonomy.name == "occ3d" and reader.label_grid is None
    assert reader.open_errors == [] and reader.camera_names == []
    assert ConvertConfig(source=f"{VARIANTS}:Bare", dataroot=tmp_path, out=tmp_path / "o.h5").source == f"{VARIANTS}:Bare"
    assert default_grid(f"{VARIANTS}:Bare") is GRID_PRESETS["occ3d"]  # PLUGIN_DEFAULT_GRID, made a grid
    assert default_grid(SPEC) == get_grid("-20,-20,-2,20,20,4.4:0.4")  # the toy reader's own default_grid
    assert default_grid("nuplan") is SOURCE_GRIDS["nuplan"] is GRID_PRESETS["openscene"]  # a built-in: the table
    # A re-export is the same reader: its source id is the class's own module path.
    assert resolve_source(f"{VARIANTS}:Alias") == SPEC


# -- resuming only with the reader that started the run ----------------------------------------------
def test_resume_refuses_another_reader_and_accepts_another_spelling(toy, tmp_path):
    root, truth = toy
    out = tmp_path / "toy.h5"
    image = root / "drives" / "drive-001" / "000001_front.png"
    good = image.read_bytes()
    image.write_bytes(b"not a png")
    with pytest.raises(ConverterError, match="front image is not a readable"):
        convert(ConvertConfig(source=SPEC, dataroot=root, out=out, on_error="stop"))
    assert [p.name[:9] for p in (tmp_path / "toy.h5.parts").glob("*.h5")] == ["drive-000"] and not out.exists()

    image.write_bytes(good)
    with pytest.raises(ConverterError, match=rf"--source: {SPEC} before, {VARIANTS}:Other now"):
        convert(ConvertConfig(source=f"{VARIANTS}:Other", dataroot=root, out=out))
    summary = convert(ConvertConfig(source="toyfleet", dataroot=root, out=out))  # the entry point: the same reader
    assert (summary.scenes, summary.resumed, summary.frames) == (2, 1, 3)
    _check_against_truth(out, root, truth)
