"""OpenOccupancy label files as the official code writes and reads them: voxels in the LIDAR_TOP frame.

The fixtures follow OpenOccupancy, not b2s's own writer:
* OpenOccupancy projects/occ_plugin/datasets/pipelines/loading.py, ``LoadOccupancy.__call__``: a file
  holds rows ``[z, y, x, cls]`` (or ``[z, y, x, vx, vy, vz, cls]``), ``voxel2world(pcd[..., [2, 1, 0]] + 0.5)``
  turns them into metres with ``pc_range = [-51.2, -51.2, -5, 51.2, 51.2, 3]`` and ``grid_size =
  [512, 512, 40]`` (also the configs' ``point_cloud_range`` / ``occ_size``); cls 0 is noise (-> 255).
* Those metres are LIDAR_TOP coordinates of the key frame: ``project_points`` takes them to the images
  with the camera-to-LiDAR transform, and "GT voxels are in LiDAR coordinate"
  (https://github.com/JeffWang987/OpenOccupancy/issues/19).
b2s puts them on its ego-frame openoccupancy grid through the key frame's LIDAR_TOP calibrated_sensor.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyquaternion import Quaternion  # what nuscenes-devkit builds calibrated_sensor rotations with
from typer.testing import CliRunner

from b2s_core.grids import GRID_PRESETS
from b2s_core.occfile import OccDataset
from b2s_core.taxonomy import map_labels
from converters.errors import ConverterError
from converters.readers.labels import read_openoccupancy

# OpenOccupancy's volume in the LiDAR frame (loading.py LoadOccupancy defaults, the configs' values).
PC_RANGE_MIN = np.array([-51.2, -51.2, -5.0])
OCC_SIZE = np.array([512, 512, 40])
VOXEL = 0.2
# b2s's ego-frame openoccupancy grid: the same volume lifted by the LiDAR height (b2s_core/grids.py).
EGO_MIN = np.array([-51.2, -51.2, -3.2])

# nuScenes v1.0-mini calibrated_sensor.json, LIDAR_TOP of the n015 car (scene-0061): sensor x to the
# ego's right, y forward, and a 1.4 degree tilt.
NUSCENES_LIDAR_TOP = {"translation": [0.943713, 0.0, 1.84023],
                      "rotation": [0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817]}


def _ego_from_lidar(calibrated_sensor: dict) -> np.ndarray:
    """(4, 4) from a nuScenes calibrated_sensor record, as nuscenes-devkit's transform_matrix builds it."""
    out = np.eye(4)
    out[:3, :3] = Quaternion(calibrated_sensor["rotation"]).rotation_matrix
    out[:3, 3] = calibrated_sensor["translation"]
    return out


def _official_file(path, voxels: list[tuple[int, int, int, int]], dtype=np.int64, velocity: bool = False):
    """Write LiDAR-frame voxels ``(x, y, z, cls)`` as OpenOccupancy's rows ``[z, y, x, (vx, vy, vz,) cls]``."""
    v = np.asarray(voxels, dtype=np.int64).reshape(-1, 4)
    columns = [v[:, 2], v[:, 1], v[:, 0]] + ([np.full(len(v), 0.5)] * 3 if velocity else []) + [v[:, 3]]
    np.save(path, np.stack(columns, axis=1).astype(dtype))


def _lidar_centre(index) -> np.ndarray:
    """(..., 3) LiDAR-frame voxel indices -> metres, as LoadOccupancy.voxel2world(index + 0.5)."""
    return PC_RANGE_MIN + (np.asarray(index, dtype=np.float64) + 0.5) * VOXEL


def test_preset_is_the_openoccupancy_volume_in_the_ego_frame():
    grid = GRID_PRESETS["openoccupancy"]
    assert grid.shape == tuple(OCC_SIZE) and grid.voxel_size == (VOXEL,) * 3
    assert np.allclose(grid.range_min, EGO_MIN) and np.allclose(grid.range_max, EGO_MIN + OCC_SIZE * VOXEL)


@pytest.mark.parametrize("dtype,velocity", [(np.int64, False), (np.float32, True)])
def test_whole_voxel_translation_places_every_voxel_exactly(tmp_path, dtype, velocity):
    # LIDAR_TOP's nominal mount (yaw -90 degrees: sensor x = ego right, y = ego forward) with a
    # translation of whole voxels, so that each LiDAR voxel centre lands on one ego voxel centre.
    calibrated = {"translation": [1.0, 0.4, 1.8], "rotation": Quaternion(axis=[0, 0, 1], degrees=-90).elements.tolist()}
    ego_from_lidar = _ego_from_lidar(calibrated)
    voxels = [(256, 300, 15, 11),  # road: LiDAR (0.1, 8.9, -1.9) -> ego (9.9, 0.3, -0.1)
              (100, 260, 20, 4),   # car: LiDAR (-31.1, 0.9, -0.9) -> ego (1.9, 31.5, 0.9), on the left
              (400, 20, 39, 16),   # vegetation, top layer: LiDAR (28.9, -47.1, 2.9) -> ego (-46.1, -28.5, 4.7)
              (500, 500, 0, 0),    # noise, bottom layer: LiDAR (48.9, 48.9, -4.9) -> ego (49.9, -48.5, -3.1)
              (0, 511, 5, 15)]     # manmade: LiDAR (-51.1, 51.1, -3.9) -> ego (52.1, 51.5, -2.1), off the ego grid
    _official_file(tmp_path / "o.npy", voxels, dtype, velocity)
    semantics = read_openoccupancy(tmp_path / "o.npy", ego_from_lidar).semantics

    expected = np.zeros(tuple(OCC_SIZE), dtype=np.uint8)
    # Ego centres whose LiDAR image lies outside [-51.2, 51.2): lidar_y = ego_x - 1.0 leaves the first
    # 5 ego x columns (ego x < -50.2), lidar_x = 0.4 - ego_y the first 2 ego y columns (ego y < -50.8);
    # lidar_z = ego_z - 1.8 keeps every layer. Unknown, not empty: 255.
    expected[:5] = 255
    expected[:, :2] = 255
    for x, y, z, cls in voxels:
        ego = ego_from_lidar[:3, :3] @ _lidar_centre((x, y, z)) + ego_from_lidar[:3, 3]
        cell = (ego - EGO_MIN) / VOXEL - 0.5
        assert np.allclose(cell, np.rint(cell), atol=1e-9)  # the fixture's premise: centre on centre
        i, j, k = np.rint(cell).astype(int)
        if 0 <= i < 512 and 0 <= j < 512 and 0 <= k < 40:
            expected[i, j, k] = 255 if cls == 0 else cls
    # the same places worked out by hand from the ego metres above: (m + (51.2, 51.2, 3.2)) / 0.2 - 0.5
    assert expected[305, 257, 15] == 11 and expected[265, 413, 20] == 4 and expected[25, 113, 39] == 16
    assert expected[505, 13, 0] == 255 and (expected == 15).sum() == 0
    np.testing.assert_array_equal(semantics, expected)


def test_nuscenes_lidar_top_rotation_places_blocks_within_half_a_voxel(tmp_path):
    # The real LIDAR_TOP calibration: yaw -89.9 degrees and a 1.4 degree tilt, which moves a voxel
    # 45 m away by about 1.1 m vertically. Solid blocks, since nearest-voxel resampling of a rotated
    # lattice moves each label by up to one voxel; the tolerance: block centroids within half a
    # voxel (0.1 m) of their true ego position along each axis, block volumes within 10 %.
    ego_from_lidar = _ego_from_lidar(NUSCENES_LIDAR_TOP)
    blocks = {4: ((250, 350, 10), (8, 12, 8)),   # car 19 m ahead, 8 x 12 x 8 voxels
              10: ((450, 480, 12), (10, 10, 15)),  # truck 45 m ahead-right
              16: ((30, 60, 20), (12, 6, 12))}    # vegetation 40 m behind-left
    voxels = []
    for cls, (start, size) in blocks.items():
        index = np.stack(np.meshgrid(*[np.arange(s, s + n) for s, n in zip(start, size)], indexing="ij"), -1).reshape(-1, 3)
        voxels += [(x, y, z, cls) for x, y, z in index]
    _official_file(tmp_path / "o.npy", voxels)
    semantics = read_openoccupancy(tmp_path / "o.npy", ego_from_lidar).semantics

    lidar_from_ego = np.linalg.inv(ego_from_lidar)
    for cls, (start, size) in blocks.items():
        start, size = np.asarray(start), np.asarray(size)
        ego_cells = np.argwhere(semantics == cls)
        ego_centres = EGO_MIN + (ego_cells + 0.5) * VOXEL
        true_centre = ego_from_lidar[:3, :3] @ _lidar_centre(start + (size - 1) / 2) + ego_from_lidar[:3, 3]
        assert np.abs(ego_centres.mean(axis=0) - true_centre).max() < 0.1, cls
        assert abs(len(ego_cells) / size.prod() - 1) < 0.1, cls
        # each labelled ego voxel's centre lies in the block in the LiDAR frame (the nearest-voxel rule)
        back = (ego_centres @ lidar_from_ego[:3, :3].T + lidar_from_ego[:3, 3] - PC_RANGE_MIN) / VOXEL
        assert np.all((back >= start) & (back < start + size)), cls
    # Nothing else is labelled; ego voxels outside the LiDAR volume (the rear strip, the tilted
    # top and bottom layers far out) are unknown.
    assert set(np.unique(semantics).tolist()) == {0, 4, 10, 16, 255}
    assert (semantics[:4] == 255).all() and (semantics[10:500, 10:500, 8:32] != 255).all()


def test_bad_calibration_or_rows_are_one_line_naming_the_file(tmp_path):
    _official_file(tmp_path / "o.npy", [(1, 2, 3, 4)])
    for bad in (np.eye(3), np.full((4, 4), np.nan), np.diag([2.0, 1.0, 1.0, 1.0])):
        with pytest.raises(ConverterError, match=r"o\.npy: the frame's LIDAR_TOP calibration is not a finite rigid"):
            read_openoccupancy(tmp_path / "o.npy", bad)
    _official_file(tmp_path / "p.npy", [(1, 2, 40, 4)])
    with pytest.raises(ConverterError, match=r"p\.npy: OpenOccupancy voxel index outside the \(512, 512, 40\) grid"):
        read_openoccupancy(tmp_path / "p.npy", np.eye(4))


# -- round trip: b2s synth writes LiDAR-frame files, b2s convert brings them back to the ego truth ------
@pytest.fixture(scope="module")
def synth_converted(tmp_path_factory):
    from b2s_cli.app import app
    from b2s_core.synth import load_manifest

    root = tmp_path_factory.mktemp("oo")
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "--out", str(root / "synth"), "--scenes", "1", "--frames", "1",
                                 "--format", "nuscenes,openoccupancy", "--image-size", "160x90", "--no-preview"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(root / "synth")
    result = runner.invoke(app, ["convert", "--source", "nuscenes", "--dataroot", str(manifest.path("nuscenes")),
                                 "--labels", f"openoccupancy:{manifest.path('openoccupancy')}", "--no-points",
                                 "--out", str(root / "oo.h5")])
    assert result.exit_code == 0, result.output
    return manifest, root / "oo.h5"


def test_synthetic_files_are_in_the_lidar_frame(synth_converted):
    manifest, _ = synth_converted
    scene = manifest.data["scenes"][0]
    key = scene["key_frames"][0]
    scene_folder = manifest.path("openoccupancy") / f"scene_{scene['nuscenes_scene_token']}"
    rows = np.load(scene_folder / "occupancy" / f"{key['nuscenes_lidar_token']}.npy")
    truth = manifest.ground_truth(scene["name"], 0)
    # The flat ground (ego z -0.15 .. 0) is 1.84 m below the sensor: LiDAR layer 15 (z -2.0 .. -1.8);
    # an ego-frame file on [-5, 3] would have it in layer 24. (The labels are LiDAR surfaces: a few road-class
    # voxels lie up to 0.8 m above the road, nearest to it.)
    road = rows[rows[:, 3] == 11]
    assert len(road) > 10_000 and (road[:, 0] == 15).mean() > 0.85 and road[:, 0].min() == 15
    # Each file voxel, taken to the ego frame with the rig, finds a solid of its label in the ego truth there.
    ego = _lidar_centre(rows[:, [2, 1, 0]]) @ truth.ego_from_lidar[:3, :3].T + truth.ego_from_lidar[:3, 3]
    cell = np.floor((ego - EGO_MIN) / VOXEL).astype(int)
    keep = np.all((cell >= 0) & (cell < OCC_SIZE), axis=1)
    expected = map_labels(truth.semantics["openoccupancy"], "occ3d", "openoccupancy")[tuple(cell[keep].T)]
    expected[expected == 255] = 0  # 'others' is written as noise (0)
    assert (expected == rows[keep, 3]).mean() > 0.85  # measured 0.89; read as ego-frame voxels: ~0.06


def test_synthetic_round_trip_matches_the_truth(synth_converted):
    manifest, out = synth_converted
    ds = OccDataset(out)
    truth = map_labels(manifest.ground_truth(manifest.scene_names[0], 0).semantics["openoccupancy"], "occ3d", "openoccupancy")
    got = ds[0].semantics
    # The sensor sits 0.943 m ahead of the ego origin: ego x < -51.2 + 0.943 (5 columns) has no labels.
    assert (got[:5] == 255).all() and (got[5] != 255).mean() > 0.99
    known = np.zeros(got.shape, dtype=bool)
    known[5:] = True
    a, b = (got != 0) & known, (truth != 0) & known
    # The files list observed surfaces, the truth is solid: the labels' voxels lie on the truth's solids with
    # their class (0.943 m and 1.84 m are not whole voxels, so nearest-voxel resampling moves edges by up to
    # half a voxel). Measured: 89 % of the labels' voxels on solids (most of the rest: ground the completion
    # raised above the road on this 0.2 m grid), 97.5 % of those with the solid's class.
    assert (a & b).sum() / a.sum() > 0.85
    assert ((got == truth) & a & b).sum() / (a & b).sum() > 0.96
