"""Vertical conventions of label sets: build-binary's --z-offset / --label-convention and ``b2s align``.

Synthetic: the analytic world (flat ground at ego z = 0) built with and without an offset, and
files whose vertical shift is known. Real (skipped without ../shared/data): the Occ3D sample's
ground layer and the real key frame built in the Occ3D convention
(``benchmarks/measure_vertical_convention.py`` prints the same numbers).
"""

from __future__ import annotations

import dataclasses
import math

import _binary_world as world
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from b2s_cli.commands import align as align_command
from b2s_cli.commands import build_binary as build_command
from b2s_core.binary.aggregate import voxels_in_extents
from b2s_core.binary.convention import (
    LABEL_CONVENTIONS,
    ConventionError,
    ShiftScore,
    best_shift,
    column_floors,
    label_convention,
    score_shifts,
    shift_layers,
)
from b2s_core.binary.pipeline import BinaryBuildConfig, BuildBinaryError, build_scene
from b2s_core.grids import VoxelGrid, get_grid
from b2s_core.occfile import OccDataset, OccFormatError, OccWriter
from b2s_core.taxonomy import BINARY
from converters.errors import ConverterError
from converters.jobs.build_binary import BuildBinaryJob, BuildBinarySummary
from converters.jobs.scene_run import check_resume_options

GROUND_LAYER = 2  # world.GRID (z from -1 m, 0.4 m voxels): the ground plane z = 0 lies in layer 2
FIELDS = ("occupancy", "mask_lidar", "mask_camera")


def _build(offset: float, keys: int = 1) -> list:
    # exact rays: the default keeps one ray per (sweep, end voxel), and which ray is kept depends on the grid
    config = BinaryBuildConfig(grid=world.GRID, z_offset=offset, dedupe_rays=False)
    return list(build_scene(lambda: world.scene(keys), config))


@pytest.fixture(scope="module")
def toy():
    return {offset: _build(offset) for offset in (0.0, -0.8, 0.4, -0.3)}


def _near_columns(grid: VoxelGrid, reach: float) -> np.ndarray:
    return np.abs(grid.centers()[:, :, 0, :2]).max(axis=-1) < reach


# -- the offset, applied -------------------------------------------------------------------------
@pytest.mark.parametrize("offset, shift", [(-0.8, -2), (0.4, 1)])
def test_whole_layer_offset_moves_every_grid_exactly(toy, offset, shift):
    plain, moved = toy[0.0][0], toy[offset][0]
    Z = world.GRID.shape[2]
    kept = slice(0, Z + shift) if shift < 0 else slice(shift, Z)  # output layers the plain build also holds
    for name in FIELDS:
        got = getattr(moved, name)
        assert got.shape == world.GRID.shape
        expected = shift_layers(getattr(plain, name), shift)
        assert np.array_equal(got[..., kept], expected[..., kept]), name
    # the ground plane z = 0 goes to layer 2 + shift, in every column near the car
    near = _near_columns(world.GRID, 10.0) & ~_near_columns(world.GRID, 3.0)  # beyond the ego body
    assert plain.occupancy[..., GROUND_LAYER][near].all()
    assert moved.occupancy[..., GROUND_LAYER + shift][near].all()
    assert (column_floors(moved.occupancy)[near] == GROUND_LAYER + shift).all()
    # poses, cameras and the LiDAR origin stay in the ego frame
    assert np.array_equal(moved.lidar_origin, plain.lidar_origin)
    assert np.array_equal(moved.cameras[0].ego_from_cam, plain.cameras[0].ego_from_cam)


def test_lowered_output_layers_beyond_the_plain_build_are_built(toy):
    # with -0.8 the top two layers hold ego z 5.4 .. 6.2 m, outside the plain build: above every solid
    # of the world (free), seen by the cameras as the layers below them are
    moved = toy[-0.8][0]
    assert not moved.occupancy[..., -2:].any()
    assert (moved.mask_camera[..., -2:].sum(axis=(0, 1)) > 0.5 * moved.mask_camera[..., -3].sum()).all()


def test_fractional_offset_and_the_work_grid():
    config = BinaryBuildConfig(grid=world.GRID, z_offset=-0.3)
    grid, layers = config.work_grid()
    # the output's voxels start 0.3 m higher; one more layer below keeps the stated range's ground in view
    assert grid.range_min[2] == pytest.approx(-1.1) and grid.range_max[2] == pytest.approx(5.7)
    assert layers == slice(1, 17) and grid.shape[2] == 17
    assert BinaryBuildConfig(grid=world.GRID).work_grid() == (world.GRID, slice(None))


def test_fractional_offset_puts_the_ground_where_z_plus_offset_lies(toy):
    # ego z = 0 is labelled at -0.3 m: layer floor((-0.3 + 1) / 0.4) = 1, in every column of bare ground
    plain, moved = toy[0.0][0], toy[-0.3][0]
    # away from the solids (the ego pose at t = 0 is the identity), whose lowest hits may lie a little above the ground
    near_solids = voxels_in_extents(world.GRID, [(pose, -size / 2 - 0.6, size / 2 + 0.6)
                                                 for pose, size in world.all_boxes(0.0)]).any(axis=-1)
    bare = ~near_solids & plain.occupancy[..., GROUND_LAYER] & ~plain.occupancy[..., GROUND_LAYER + 1 :].any(axis=-1)
    assert bare.sum() > 4000
    assert (column_floors(moved.occupancy)[bare] == 1).all()
    assert not moved.occupancy[..., 2:][bare].any()


def test_offset_beyond_the_grid_height_is_refused():
    for offset in (6.4, -7.0, math.nan):
        with pytest.raises(BuildBinaryError, match="z_offset"):
            BinaryBuildConfig(grid=world.GRID, z_offset=offset)


# -- estimating the offset ------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [-2, 1, 3])
def test_score_shifts_recovers_a_known_shift(toy, shift):
    rng = np.random.default_rng(shift + 10)
    built = toy[0.0][0].occupancy
    labels = shift_layers(built, shift)
    labels ^= rng.random(labels.shape) < 0.002  # label noise: ~ as many flipped voxels as 10 % of the occupied
    mask = rng.random(labels.shape) < 0.7
    scores = score_shifts([(built, labels, mask)], range(-4, 5))
    best = best_shift(scores)
    assert best.shift == shift and best.iou > 0.6
    assert all(s.iou < 0.5 * best.iou for s in scores if s is not best)
    # two frames add up: the counts double
    twice = score_shifts([(built, labels, mask)] * 2, [shift])[0]
    assert (twice.intersection, twice.union) == (2 * best.intersection, 2 * best.union)


def test_best_shift_prefers_the_smaller_move_on_a_tie():
    assert best_shift([ShiftScore(-1, 1, 2), ShiftScore(0, 1, 2), ShiftScore(1, 1, 2)]).shift == 0
    with pytest.raises(ConventionError):
        score_shifts([(np.zeros((2, 2, 4), bool), np.zeros((2, 2, 5), bool), None)], [0])


def test_label_conventions():
    assert label_convention("occ3d").z_offset == pytest.approx(-0.8)
    assert label_convention("none").z_offset == 0.0
    with pytest.raises(ConventionError, match="unknown label convention 'occ4d'"):
        label_convention("occ4d")


def _write(path, frames, grid=world.GRID, z_offset=0.0):
    with OccWriter(path, grid=grid, taxonomy=BINARY, source="nuscenes", camera_names=[c.name for c in world.cameras()],
                   z_offset=z_offset) as writer:
        writer.write_scene("toy", frames)
    return path


def _align_app() -> typer.Typer:
    app = typer.Typer()
    app.command("align")(align_command.align)
    app.command("unused")(lambda: None)  # two commands keep Typer from collapsing into a single-command app
    return app


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("align")
    plain, occ3d = _build(0.0, keys=2), _build(-0.8, keys=2)  # the "labels": the same world, 2 layers lower
    return folder, _write(folder / "binary.h5", plain), _write(folder / "labels.h5", occ3d), plain


def test_align_cli_reports_the_known_shift(toy_files):
    _, binary, labels, _ = toy_files
    result = CliRunner().invoke(_align_app(), ["align", "--binary", str(binary), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "on 2 shared frames" in result.output
    assert "best shift -2 layers" in result.output and "--z-offset -0.8" in result.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if line.startswith("│")]
    rows = {int(shift): float(iou) for shift, _, iou, _, _ in cells}
    assert sorted(rows) == list(range(-4, 5))
    assert rows[-2] > 0.99 and max(v for k, v in rows.items() if k != -2) < 0.5  # the same world: all but exact


def test_align_adds_the_offset_the_binary_file_was_built_with(toy_files, tmp_path):
    _, _, labels, _ = toy_files
    half = _write(tmp_path / "half.h5", _build(-0.4, keys=2), z_offset=-0.4)  # one layer of the way there
    assert OccDataset(half).z_offset == pytest.approx(-0.4)
    result = CliRunner().invoke(_align_app(), ["align", "--binary", str(half), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "best shift -1 layers" in result.output and "--z-offset -0.8" in result.output
    assert "built with --z-offset -0.4" in result.output


def test_files_of_different_offsets_do_not_mix(toy_files, tmp_path):
    _, binary, _, plain = toy_files
    lowered = _write(tmp_path / "lowered.h5", [dataclasses.replace(f, token=f"x-{f.token}") for f in plain], z_offset=-0.8)
    with pytest.raises(OccFormatError, match="vertical offset"):
        OccDataset([binary, lowered])


def test_align_cli_refusals_are_one_line(toy_files, tmp_path):
    folder, binary, labels, plain = toy_files
    other_grid = VoxelGrid(world.GRID.range_min, (16.0, 16.0, 5.8), world.GRID.voxel_size)
    wider = [dataclasses.replace(f, occupancy=np.zeros(other_grid.shape, bool), mask_lidar=None, mask_camera=None)
             for f in plain]
    strangers = [dataclasses.replace(f, token=f"other-{f.token}") for f in plain]
    cases = [
        (["--labels", str(_write(tmp_path / "wider.h5", wider, other_grid))], "differs from"),
        (["--labels", str(_write(tmp_path / "strangers.h5", strangers))], "share no frame token"),
        (["--labels", str(labels), "--max-shift", "-1"], "--max-shift"),
        (["--labels", str(folder / "missing.h5")], "missing.h5"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(_align_app(), ["align", "--binary", str(binary), *extra])
        assert result.exit_code == 1, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    # --mask is a choice: another value is a usage error (exit 2) that lists the values
    result = CliRunner().invoke(_align_app(), ["align", "--binary", str(binary), "--labels", str(labels), "--mask", "sometimes"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "'sometimes' is not one of 'camera', 'lidar', 'none'" in result.output, result.output


# -- build-binary's options and the resume guard ------------------------------------------------
def _build_app() -> typer.Typer:
    app = typer.Typer()
    app.command("build-binary")(build_command.build_binary)
    app.command("unused")(lambda: None)
    return app


def test_cli_label_convention_and_z_offset(monkeypatch, tmp_path):
    seen = []

    def fake(job, progress):
        seen.append(job)
        return BuildBinarySummary(job.out, 0, 0, 0, [])

    monkeypatch.setattr(build_command, "run_build", fake)
    base = ["build-binary", "--source", "nuscenes", "--dataroot", str(tmp_path), "--out", str(tmp_path / "b.h5")]
    for extra, offset in ((["--label-convention", "occ3d"], -0.8), (["--z-offset", "-0.4"], -0.4), ([], 0.0)):
        result = CliRunner().invoke(_build_app(), base + extra)
        assert result.exit_code == 0, result.output
        assert seen[-1].z_offset == pytest.approx(offset)
    for extra, message in ((["--label-convention", "occ3d", "--z-offset", "-0.4"], "cannot be given together"),
                           (["--z-offset", "7"], "within the grid's height (6.4 m)"),
                           (["--z-offset", "nan"], "--z-offset must be a finite number")):
        result = CliRunner().invoke(_build_app(), base + extra)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, (extra, result.output)
    result = CliRunner().invoke(_build_app(), base + ["--label-convention", "ocd3"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "'ocd3' is not one of 'none', 'occ3d'" in result.output, result.output  # a choice
    assert len(seen) == 3


def test_resume_refuses_another_z_offset(tmp_path):
    parts = tmp_path / "b.h5.parts"
    parts.mkdir()

    def options(offset: float) -> dict:
        job = BuildBinaryJob("nuscenes", tmp_path, tmp_path / "b.h5", grid="occ3d", z_offset=offset)
        return job.output_options()

    assert "--z-offset" not in options(0.0)  # a record written before the option existed resumes at offset 0
    check_resume_options(parts, options(0.0), what="build")
    (parts / "scene-0001-0123456789.h5").write_bytes(b"")  # a finished part: now the options must match
    check_resume_options(parts, options(0.0), what="build")
    with pytest.raises(ConverterError, match=r"--z-offset: none before, -0.8 now"):
        check_resume_options(parts, options(-0.8), what="build")
    # and the other way round: parts built in the Occ3D convention resume only in it
    (parts / "options.json").unlink()
    check_resume_options(parts, options(-0.8), what="build")
    check_resume_options(parts, options(-0.8), what="build")
    with pytest.raises(ConverterError, match=r"--z-offset: -0.8 before, none now"):
        check_resume_options(parts, options(0.0), what="build")


# -- the real data -------------------------------------------------------------------------------
OCC3D_FREE, OCC3D_CAR, OCC3D_DRIVEABLE = 17, 4, 11  # Occ3D README: nuScenes-lidarseg classes, 17 = free


def _near_8m(grid: VoxelGrid) -> np.ndarray:
    return _near_columns(grid, 8.0)


def _floor_histogram(occupancy: np.ndarray, where: np.ndarray) -> np.ndarray:
    floors = column_floors(occupancy)[where]
    return np.bincount(floors[floors >= 0], minlength=occupancy.shape[2])


def test_occ3d_sample_puts_the_ground_in_layer_0(occ3d_sample):
    semantics = np.load(occ3d_sample)["semantics"]
    grid = get_grid("occ3d")
    assert semantics.shape == grid.shape
    driveable_layers = np.nonzero(semantics == OCC3D_DRIVEABLE)[2]
    assert len(driveable_layers) == 8433 and (driveable_layers == 0).all()
    floors = _floor_histogram(semantics != OCC3D_FREE, _near_8m(grid))
    assert (floors.sum(), floors[0]) == (1551, 1367)
    car_layers = np.bincount(np.nonzero(semantics == OCC3D_CAR)[2], minlength=16)
    assert car_layers[0] > 0 and not car_layers[7:].any()  # cars stand in layer 0 and end by layer 6


@pytest.fixture(scope="module")
def keyframe_builds(nuscenes_keyframe):
    from test_build_binary import keyframe_sensor_frame  # the real key frame as a SensorFrame

    frame, _ = keyframe_sensor_frame(nuscenes_keyframe)
    grid = get_grid("occ3d")
    return {offset: next(build_scene(lambda: [frame], BinaryBuildConfig(grid=grid, z_offset=offset, dedupe_rays=False)))
            for offset in (0.0, LABEL_CONVENTIONS["occ3d"].z_offset)}


def test_real_keyframe_in_the_occ3d_convention(keyframe_builds, occ3d_sample):
    grid = get_grid("occ3d")
    near = _near_8m(grid)
    plain, occ3d = keyframe_builds[0.0], keyframe_builds[LABEL_CONVENTIONS["occ3d"].z_offset]
    before = _floor_histogram(plain.occupancy, near)
    after = _floor_histogram(occ3d.occupancy, near)
    assert np.argmax(before) == 2 and before[2] > 0.85 * before.sum()  # LiDAR ground at ego z ~ 0: layer 2
    assert np.argmax(after) == 0 and np.array_equal(after[:14], before[2:])  # moved down two layers, as Occ3D's
    assert np.array_equal(occ3d.occupancy[..., :14], plain.occupancy[..., 2:])
    # the Occ3D sample (another frame) agrees on the ground under the car: compare floor histograms per shift
    semantics = np.load(occ3d_sample)["semantics"]
    labelled = _floor_histogram(semantics != OCC3D_FREE, near)

    def overlap(histogram):
        return np.minimum(histogram / histogram.sum(), labelled / labelled.sum()).sum()

    overlaps = {s: overlap(shift_layers(before[None, None], s)[0, 0]) for s in range(-4, 5)}
    assert max(overlaps, key=overlaps.get) == -2
    assert overlap(before) < 0.05 and overlap(after) > 0.95
