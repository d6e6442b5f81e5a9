"""Readers and ``b2s convert`` on the real nuScenes key frame and on tiny nuPlan / OpenScene logs."""

from __future__ import annotations

import hashlib
import json
import pickle
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _convert_data import (
    CAMERAS_TINY,
    EGO_FROM_LIDAR_TINY,
    wrap_nuscenes_keyframe,
    write_tiny_nuplan,
    write_tiny_openscene,
)

from b2s_core.occfile import OccDataset
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.convert import ConvertConfig, convert
from converters.jobs.progress import SceneProgress
from converters.jobs.scene_run import _start_method


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture
def nuscenes_root(nuscenes_keyframe, tmp_path) -> Path:
    root = tmp_path / "nuscenes"
    wrap_nuscenes_keyframe(nuscenes_keyframe, root)
    return root


@pytest.fixture
def frame_json(nuscenes_keyframe) -> dict:
    return json.loads((nuscenes_keyframe / "frame.json").read_text())


@pytest.fixture
def occ3d_root(occ3d_sample, tmp_path, frame_json) -> Path:
    folder = tmp_path / "occ3d" / "gts" / "scene-0061" / frame_json["sample_token"]
    folder.mkdir(parents=True)
    (folder / "labels.npz").symlink_to(occ3d_sample)
    return tmp_path / "occ3d"


@pytest.fixture
def nuplan(tmp_path):
    return tmp_path / "nuplan", write_tiny_nuplan(tmp_path / "nuplan")


@pytest.fixture
def openscene(tmp_path):
    return tmp_path / "openscene", tmp_path / "os-labels", write_tiny_openscene(tmp_path / "openscene", tmp_path / "os-labels")


def _transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


# -- the real nuScenes key frame ---------------------------------------------------------------------
def test_nuscenes_reader_real_keyframe(nuscenes_root, frame_json):
    reader = open_reader("nuscenes", nuscenes_root, version="v1.0-mini")
    assert reader.scene_names() == ["scene-0061"]
    assert reader.camera_names == ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
    (frame,) = list(reader.read_scene("scene-0061"))
    assert frame.token == frame_json["sample_token"] and frame.timestamp == frame_json["timestamp_us"]
    assert np.allclose(frame.global_from_ego, frame_json["ego2global"], atol=1e-6)
    points = frame.lidar.load()
    assert points.shape == (34688, 5) and points.dtype == np.float32
    # Boxes: global frame, size reordered to (length, width, height); back in the LiDAR frame they
    # match frame.json's boxes (x, y, z, l, w, h, yaw).
    lidar_from_global = np.linalg.inv(frame.global_from_ego @ frame.lidar.ego_from_sensor)
    expected = np.array([b["box"] for b in frame_json["boxes_lidar_frame"]["boxes"]])
    got = np.array([_transform(lidar_from_global, box.center[None])[0] for box in frame.boxes])
    assert np.allclose(got, expected[:, :3], atol=1e-5)
    assert np.allclose([box.size for box in frame.boxes], expected[:, 3:6])
    yaw = [np.arctan2(*(lidar_from_global @ box.global_from_box)[[1, 0], 0]) for box in frame.boxes]
    assert np.allclose(np.cos(np.subtract(yaw, expected[:, 6])), 1.0, atol=1e-8)
    assert {box.category for box in frame.boxes} >= {"human.pedestrian.adult", "vehicle.car"}
    assert frame.boxes[0].label == 7  # a pedestrian in the Occ3D taxonomy


def test_nuscenes_lidar_projects_into_images_at_plausible_places(nuscenes_root, frame_json):
    """Acceptance: LiDAR points projected with the stored calibration land where the dataset says."""
    (frame,) = list(open_reader("nuscenes", nuscenes_root).read_scene("scene-0061"))
    points_ego = _transform(frame.lidar.ego_from_sensor, frame.lidar.load()[:, :3].astype(np.float64))
    for cam in frame.cameras:
        points_cam = _transform(np.linalg.inv(cam.ego_from_cam), points_ego)
        front = points_cam[:, 2] > 1.0
        pixels = points_cam[front] @ cam.intrinsic.T
        uv = pixels[:, :2] / pixels[:, 2:]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        assert inside.sum() > 2000, cam.name
        # The dataset's own lidar2cam (ego-motion compensated) puts the points on the same pixels.
        cam_from_lidar = np.array(frame_json["cameras"][cam.name]["lidar2cam"])
        reference = _transform(cam_from_lidar, frame.lidar.load()[:, :3].astype(np.float64))[front] @ cam.intrinsic.T
        assert np.abs(reference[:, :2] / reference[:, 2:] - uv)[inside].max() < 0.5, cam.name
        # Ground returns (ego z < 0.3 m, farther than 3 m) appear below the image centre line.
        ground = (points_ego[front][:, 2] < 0.3) & inside & (points_cam[front][:, 2] > 3.0)
        assert (uv[ground, 1] > cam.intrinsic[1, 2]).mean() > 0.95, cam.name
    front_cam = frame.cameras[0]
    points_cam = _transform(np.linalg.inv(front_cam.ego_from_cam), points_ego)
    left = (points_ego[:, 1] > 2.0) & (points_cam[:, 2] > 1.0)
    u = (points_cam[left] @ front_cam.intrinsic.T)[:, 0] / points_cam[left][:, 2]
    assert (u < front_cam.intrinsic[0, 2]).mean() > 0.99  # things on the left are in the left half


def test_convert_real_keyframe_with_occ3d_roundtrip(nuscenes_root, occ3d_root, occ3d_sample, tmp_path):
    out = tmp_path / "real.h5"
    summary = convert(ConvertConfig("nuscenes", nuscenes_root, out, labels=f"occ3d:{occ3d_root}", embed_images=True))
    assert summary.frames == 1 and not summary.skipped
    ds = OccDataset(out)
    assert ds.taxonomy.name == "occ3d" and ds.grid.shape == (200, 200, 16) and ds.source == "nuscenes"
    frame = ds[0]
    with np.load(occ3d_sample) as raw:
        assert np.array_equal(frame.semantics, raw["semantics"])
        assert np.array_equal(frame.mask_lidar, raw["mask_lidar"].astype(bool))
        assert np.array_equal(frame.mask_camera, raw["mask_camera"].astype(bool))
        assert np.array_equal(frame.occupancy, raw["semantics"] != 17)
    (sensor_frame,) = list(open_reader("nuscenes", nuscenes_root).read_scene("scene-0061"))
    for i, cam in enumerate(sensor_frame.cameras):
        assert np.array_equal(frame.cameras[i].intrinsic, cam.intrinsic)
        assert np.array_equal(frame.cameras[i].ego_from_cam, cam.ego_from_cam)
        assert ds.image(0, i) == (nuscenes_root / cam.image_path).read_bytes()
    assert np.array_equal(frame.global_from_ego, sensor_frame.global_from_ego)
    assert frame.points.shape == (34688, 3)


# -- nuPlan and OpenScene: converted frames equal the writer's ground truth ------------------------
def test_nuplan_convert_matches_truth(nuplan, tmp_path):
    root, truth = nuplan
    out = tmp_path / "nuplan.h5"
    summary = convert(ConvertConfig("nuplan", root, out, embed_images=True))
    assert summary.frames == 4 and summary.scenes == 2 and not summary.skipped
    ds = OccDataset(out)
    assert [s.name for s in ds.scenes] == ["scene-0000", "scene-0001"] and ds.camera_names == ["CAM_F0", "CAM_B0"]
    for i, expected in enumerate(f for scene in truth["scenes"].values() for f in scene[::10]):
        frame = ds[i]
        assert frame.token == expected["token"] and frame.timestamp == expected["timestamp"]
        assert np.allclose(frame.global_from_ego, expected["global_from_ego"], atol=1e-12)
        for c, name in enumerate(ds.camera_names):
            assert np.array_equal(frame.cameras[c].intrinsic, CAMERAS_TINY[name][1])
            assert np.allclose(frame.cameras[c].ego_from_cam, CAMERAS_TINY[name][0], atol=1e-12)
            assert ds.image(i, c) == (truth["sensor_root"] / expected["images"][name]).read_bytes()
        ego_points = _transform(EGO_FROM_LIDAR_TINY, expected["points"][:, :3].astype(np.float64)).astype(np.float32)
        assert np.allclose(frame.points, ego_points, atol=1e-5)


def test_nuplan_reader_sweeps_and_boxes(nuplan):
    root, truth = nuplan
    frames = list(open_reader("nuplan", root).read_scene("scene-0001"))
    assert [len(f.sweeps) for f in frames] == [0, 9]
    assert [s.timestamp for s in frames[1].sweeps] == [f["timestamp"] for f in truth["scenes"]["scene-0001"][1:10]]
    box, expected = frames[1].boxes[0], truth["scenes"]["scene-0001"][10]["boxes"][0]
    assert box.track_id == expected["track"] and box.category == "vehicle" and box.label == 0
    assert np.allclose(box.size, expected["size"]) and np.allclose(box.center, expected["center"])
    assert np.isclose(np.arctan2(box.global_from_box[1, 0], box.global_from_box[0, 0]), expected["yaw"])


def test_openscene_convert_labels_bit_exact(openscene, tmp_path):
    root, labels, truth = openscene
    out = tmp_path / "os.h5"
    summary = convert(ConvertConfig("openscene", root, out, labels=f"openscene:{labels}"))
    assert summary.frames == 6 and not summary.skipped
    ds = OccDataset(out)
    assert ds.taxonomy.name == "openscene" and ds.grid.shape == (200, 200, 16)
    expected = [f for scene in truth["scenes"].values() for f in scene]
    for i, exp in enumerate(expected):
        frame = ds[i]
        assert frame.token == exp["token"] and np.array_equal(frame.semantics, exp["semantics"])
        assert np.allclose(frame.global_from_ego, exp["global_from_ego"], atol=1e-12)
        assert np.allclose(frame.cameras[0].ego_from_cam, CAMERAS_TINY["CAM_F0"][0], atol=1e-12)
        assert frame.cameras[0].width == 32 and frame.cameras[0].height == 24
    (first,) = list(open_reader("openscene", root).read_scene(ds.scenes[0].name))[:1]
    box_ego = np.linalg.inv(first.global_from_ego) @ first.boxes[0].global_from_box  # gt_boxes are ego-frame
    assert np.allclose(box_ego[:3, 3], expected[0]["gt_boxes"][0, :3]) and np.allclose(first.boxes[0].size, (4.4, 1.8, 1.5))


# -- workers, shards, resume ---------------------------------------------------------------------------
def test_two_workers_and_shards_give_the_same_frames(nuplan, tmp_path):
    root, _ = nuplan
    one = OccDataset(convert(ConvertConfig("nuplan", root, tmp_path / "one.h5")).out)
    two = OccDataset(convert(ConvertConfig("nuplan", root, tmp_path / "two.h5", workers=2)).out)
    shard = OccDataset(convert(ConvertConfig("nuplan", root, tmp_path / "s1.h5", shard=(1, 2))).out)
    assert len(one) == len(two) == 4 and [s.name for s in shard.scenes] == ["scene-0001"]
    for i in range(4):
        assert one[i].token == two[i].token and np.array_equal(one[i].occupancy, two[i].occupancy)
        assert np.array_equal(one[i].points, two[i].points)
    assert shard[0].token == one[2].token


def test_workers_never_fork_a_process_that_has_threads():
    # A fork copies only the forking thread: a lock another Python thread held stays locked in the
    # worker forever (seen once as a test suite that hung in convert --workers 2).
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert _start_method() == "spawn"
    finally:
        stop.set()
        other.join()
    if sys.platform.startswith("linux"):  # a fresh single-threaded process keeps the cheap fork
        code = "from converters.jobs.scene_run import _start_method; print(_start_method())"
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "fork"


def test_stop_keeps_finished_scenes_and_resume_redoes_only_the_rest(nuplan, tmp_path):
    root, truth = nuplan
    bad = truth["sensor_root"] / truth["scenes"]["scene-0001"][10]["lidar"]
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) - 30])  # truncated .pcd
    out = tmp_path / "r.h5"
    with pytest.raises(ConverterError, match=r"\.pcd: truncated PCD"):
        convert(ConvertConfig("nuplan", root, out, on_error="stop"))
    assert not out.exists()
    parts = list((tmp_path / "r.h5.parts").glob("*.h5"))
    assert len(parts) == 1  # scene-0000 finished and kept
    bad.write_bytes(good)
    summary = convert(ConvertConfig("nuplan", root, out))
    assert summary.resumed == 1 and summary.frames == 2 and len(OccDataset(out)) == 4


class _CtrlCAfterFirstScene(SceneProgress):
    def scene_done(self, scene, frames, skipped):
        raise KeyboardInterrupt


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("changed, refusal", [
    ({"labels": "LABELS"}, r"\(--labels: none before, openscene:.*os-labels now\)"),
    ({"store_points": False}, r"\(--points: on before, off now\)"),
    ({"embed_images": True}, r"\(--embed-images: off before, on now\)"),
    ({"grid": "-16,-16,-1,16,16,5.4:0.4"}, r"\(--grid: -50,-50,-4,50,50,4:0\.5 before, -16,-16,-1,16,16,5\.4:0\.4 now\)"),
], ids=["labels-added", "no-points", "embed-images", "grid"])
def test_resume_with_other_output_options_is_refused_and_keeps_the_parts(openscene, tmp_path, changed, refusal):
    root, labels, _ = openscene
    out = tmp_path / "a.h5"
    parts = tmp_path / "a.h5.parts"
    with pytest.raises(KeyboardInterrupt):
        convert(ConvertConfig("openscene", root, out), _CtrlCAfterFirstScene())
    before = _file_hashes(parts)
    assert len([name for name in before if name.endswith(".h5")]) == 1 and "options.json" in before
    options = {k: f"openscene:{labels}" if v == "LABELS" else v for k, v in changed.items()}
    with pytest.raises(ConverterError, match=r"a\.h5\.parts: holds scenes of a different conversion " + refusal):
        convert(ConvertConfig("openscene", root, out, **options))
    assert _file_hashes(parts) == before and not out.exists()
    # the same output options resume; selection and running options may change
    summary = convert(ConvertConfig("openscene", root, out, workers=2, on_error="stop"))
    assert (summary.resumed, summary.frames, len(OccDataset(out))) == (1, 3, 6)


def _stop_at_a_broken_lidar(nuplan, scene: str, out: Path) -> None:
    """Break the first LiDAR file of ``scene`` and run a conversion that stops there (--on-error stop)."""
    root, truth = nuplan
    (truth["sensor_root"] / truth["scenes"][scene][0]["lidar"]).write_bytes(b"broken")
    with pytest.raises(ConverterError):
        convert(ConvertConfig("nuplan", root, out, on_error="stop"))


def test_other_options_may_start_over_when_no_scene_was_finished(nuplan, tmp_path):
    root, _ = nuplan
    out = tmp_path / "a.h5"
    _stop_at_a_broken_lidar(nuplan, "scene-0000", out)
    assert not list((tmp_path / "a.h5.parts").glob("*.h5")) and (tmp_path / "a.h5.parts" / "options.json").is_file()
    summary = convert(ConvertConfig("nuplan", root, out, store_points=False))  # nothing to mix: the record is replaced
    assert summary.resumed == 0 and len(summary.skipped) == 1 and OccDataset(out)[0].points is None


# -- bad inputs: one clear message naming the file; skip or stop ------------------------------------
def test_missing_image_nuscenes(nuscenes_root, tmp_path):
    image = next((nuscenes_root / "samples" / "CAM_BACK").iterdir())
    image.unlink()
    summary = convert(ConvertConfig("nuscenes", nuscenes_root, tmp_path / "a.h5"))
    assert summary.frames == 0 and len(summary.skipped) == 1
    assert str(image) in summary.skipped[0].problem and "CAM_BACK image not found" in summary.skipped[0].problem
    with pytest.raises(ConverterError, match="CAM_BACK image not found"):
        convert(ConvertConfig("nuscenes", nuscenes_root, tmp_path / "b.h5", on_error="stop"))
    assert not (tmp_path / "b.h5").exists()


def test_truncated_pcd_bin_nuscenes(nuscenes_root, tmp_path):
    lidar = next((nuscenes_root / "samples" / "LIDAR_TOP").iterdir())
    data = lidar.read_bytes()
    lidar.unlink()
    lidar.write_bytes(data[:-6])
    summary = convert(ConvertConfig("nuscenes", nuscenes_root, tmp_path / "a.h5"))
    (row,) = summary.skipped
    assert row.problem.startswith(str(lidar)) and "truncated LiDAR file" in row.problem


def test_missing_lidar_nuplan_skips_one_frame(nuplan, tmp_path):
    root, truth = nuplan
    missing = truth["sensor_root"] / truth["scenes"]["scene-0000"][0]["lidar"]
    missing.unlink()
    summary = convert(ConvertConfig("nuplan", root, tmp_path / "a.h5"))
    assert summary.frames == 3 and [s.token for s in summary.skipped] == [truth["scenes"]["scene-0000"][0]["token"]]
    assert summary.skipped[0].problem == f"{missing}: LiDAR file not found"
    assert len(OccDataset(tmp_path / "a.h5")) == 3


def test_missing_token_in_tables(nuplan, nuscenes_root, tmp_path):
    root, truth = nuplan
    con = sqlite3.connect(truth["db"])
    con.execute("DELETE FROM track WHERE rowid = 1")
    con.commit()
    con.close()
    summary = convert(ConvertConfig("nuplan", root, tmp_path / "a.h5"))
    assert summary.frames == 0 and len(summary.skipped) == 4
    assert "refers to track" in summary.skipped[0].problem and str(truth["db"]) in summary.skipped[0].problem
    # nuScenes: a sample_data whose ego pose is not in ego_pose.json
    table = nuscenes_root / "v1.0-mini" / "sample_data.json"
    rows = json.loads(table.read_text())
    rows[0]["ego_pose_token"] = "feedfeedfeedfeedfeedfeedfeedfeed"
    table.write_text(json.dumps(rows))
    summary = convert(ConvertConfig("nuscenes", nuscenes_root, tmp_path / "b.h5"))
    (row,) = summary.skipped
    assert "sample_data.json" in row.problem and "feedfeedfeedfeedfeedfeedfeedfeed" in row.problem and "ego_pose" in row.problem
    # A token missing where the devkit itself indexes the tables stops at open, naming the table.
    rows[0]["calibrated_sensor_token"] = "deaddeaddeaddeaddeaddeaddeaddead"
    table.write_text(json.dumps(rows))
    with pytest.raises(ConverterError, match=r"sample_data\.json: refers to token deaddead"):
        open_reader("nuscenes", nuscenes_root)


def test_label_of_wrong_shape_is_skipped(openscene, tmp_path):
    root, labels, truth = openscene
    scene = next(iter(truth["scenes"]))
    token = truth["scenes"][scene][1]["token"]
    bad = next(labels.rglob(f"{token}.npy"))
    np.save(bad, np.zeros((5, 3), np.int64))
    summary = convert(ConvertConfig("openscene", root, tmp_path / "a.h5", labels=f"openscene:{labels}"))
    (row,) = summary.skipped
    assert row.token == token and row.problem.startswith(str(bad)) and "expected (N, 2)" in row.problem
    assert summary.frames == 5


def test_corrupt_pickle_is_reported_and_others_convert(openscene, tmp_path):
    root, _, truth = openscene
    corrupt = truth["meta"].with_name("2021.03.03_broken.pkl")
    corrupt.write_bytes(truth["meta"].read_bytes()[:100])
    summary = convert(ConvertConfig("openscene", root, tmp_path / "a.h5"))
    assert summary.frames == 6 and len(summary.skipped) == 1 and str(corrupt) in summary.skipped[0].problem
    with pytest.raises(ConverterError, match="broken.pkl: .*pickle"):
        convert(ConvertConfig("openscene", root, tmp_path / "b.h5", on_error="stop"))


def test_malicious_meta_pickle_never_runs(openscene, tmp_path):
    root, _, truth = openscene

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'ran'}",))

    truth["meta"].write_bytes(pickle.dumps([{"token": "x", "scene_name": "s", "p": Payload()}]))
    with pytest.raises(ConverterError, match="refused to load global"):
        convert(ConvertConfig("openscene", root, tmp_path / "a.h5", on_error="stop"))
    assert not (tmp_path / "ran").exists()


def test_existing_output_is_not_overwritten(nuplan, tmp_path):
    root, _ = nuplan
    out = tmp_path / "a.h5"
    out.write_bytes(b"precious")
    with pytest.raises(ConverterError, match="output exists"):
        convert(ConvertConfig("nuplan", root, out))
    assert out.read_bytes() == b"precious"


def test_selection_errors(nuscenes_root, nuplan):
    with pytest.raises(ConverterError, match="version folder not found; versions found: v1.0-mini"):
        open_reader("nuscenes", nuscenes_root, version="v1.0-trainval")
    with pytest.raises(ConverterError, match="no scene named scene-9999"):
        open_reader("nuscenes", nuscenes_root, scenes=["scene-9999"])
    assert open_reader("nuscenes", nuscenes_root, split="mini_train").scene_names() == ["scene-0061"]
    with pytest.raises(ConverterError, match="selects none"):
        open_reader("nuscenes", nuscenes_root, split="mini_val")
    with pytest.raises(ConverterError, match="unknown nuScenes split"):
        open_reader("nuscenes", nuscenes_root, split="holiday")
    assert open_reader("nuplan", nuplan[0], scenes=["scene-0001"]).scene_names() == ["scene-0001"]
    with pytest.raises(ConverterError, match="do not belong to nuScenes"):
        open_reader("nuscenes", nuscenes_root, labels=f"openscene:{nuscenes_root}")


def test_openoccupancy_labels_on_real_keyframe(nuscenes_root, frame_json, tmp_path):
    reader = open_reader("nuscenes", nuscenes_root)
    (frame,) = list(reader.read_scene("scene-0061"))
    folder = tmp_path / "openocc" / f"scene_{frame.source_tokens['scene']}" / "occupancy"
    folder.mkdir(parents=True)
    rows = np.array([[0, 10, 20, 4], [39, 300, 256, 16], [20, 256, 256, 0]], dtype=np.float32)  # z, y, x, label
    np.save(folder / f"{frame.source_tokens['lidar_sample_data']}.npy", rows)
    out = tmp_path / "oo.h5"
    summary = convert(ConvertConfig("nuscenes", nuscenes_root, out, labels=f"openoccupancy:{tmp_path / 'openocc'}", store_points=False))
    assert summary.frames == 1
    ds = OccDataset(out)
    assert ds.grid.shape == (512, 512, 40) and ds.taxonomy.name == "openoccupancy"
    semantics = ds[0].semantics
    # The rows are LIDAR_TOP-frame voxels (OpenOccupancy's convention): each lands in the ego voxel that
    # holds its centre moved by the dataset's own lidar2ego (tilted 1.4 degrees, 1.84 m up).
    lidar2ego = np.asarray(frame_json["lidar"]["lidar2ego"])
    centres = np.array([-51.2, -51.2, -5.0]) + (rows[:, [2, 1, 0]] + 0.5) * 0.2
    ego = np.floor((centres @ lidar2ego[:3, :3].T + lidar2ego[:3, 3] - ds.grid.origin) / 0.2).astype(int)
    assert [semantics[tuple(e)] for e in ego] == [4, 16, 255]
    assert ((semantics != 0) & (semantics != 255)).sum() == 2 and ds[0].points is None


def test_missing_occ3d_label_is_skipped(nuscenes_root, tmp_path):
    (tmp_path / "occ3d" / "gts").mkdir(parents=True)
    summary = convert(ConvertConfig("nuscenes", nuscenes_root, tmp_path / "a.h5", labels=f"occ3d:{tmp_path / 'occ3d'}"))
    (row,) = summary.skipped
    assert "labels.npz: label file not found" in row.problem and "scene-0061" in row.problem


def test_missing_image_nuplan(nuplan, tmp_path):
    root, truth = nuplan
    image = truth["sensor_root"] / truth["scenes"]["scene-0001"][10]["images"]["CAM_B0"]
    image.unlink()
    summary = convert(ConvertConfig("nuplan", root, tmp_path / "a.h5"))
    assert [s.problem for s in summary.skipped] == [f"{image}: CAM_B0 image not found"] and summary.frames == 3


def test_unlabelled_occupancy_is_the_voxelised_key_sweep(nuplan, tmp_path):
    root, _ = nuplan
    out = tmp_path / "a.h5"
    convert(ConvertConfig("nuplan", root, out, grid="-10,-10,-3,10,10,5:0.5"))
    ds = OccDataset(out)
    frame = ds[1]
    assert ds.grid.shape == (40, 40, 16) and frame.semantics is None
    assert np.array_equal(frame.occupancy, ds.grid.voxelize(frame.points)) and frame.occupancy.sum() > 10
    assert np.allclose(frame.lidar_origin, EGO_FROM_LIDAR_TINY[:3, 3])


def test_nuplan_split_folder(nuplan):
    root, _ = nuplan
    assert len(open_reader("nuplan", root, split="mini").scene_names()) == 2
    with pytest.raises(ConverterError, match="no nuPlan .db log found for split trainval"):
        open_reader("nuplan", root, split="trainval")


def test_resume_refuses_parts_of_another_conversion(nuplan, tmp_path):
    root, _ = nuplan
    out = tmp_path / "a.h5"
    _stop_at_a_broken_lidar(nuplan, "scene-0001", out)
    with pytest.raises(ConverterError, match=r"a\.h5\.parts: holds scenes of a different conversion"):
        convert(ConvertConfig("nuplan", root, out, embed_images=True))


def test_stop_in_a_worker_process_reaches_the_caller_intact(nuplan, tmp_path):
    root, truth = nuplan
    missing = truth["sensor_root"] / truth["scenes"]["scene-0001"][10]["lidar"]
    missing.unlink()
    with pytest.raises(ConverterError) as info:
        convert(ConvertConfig("nuplan", root, tmp_path / "a.h5", workers=2, on_error="stop"))
    assert info.value.path == str(missing) and info.value.problem == "LiDAR file not found"


def test_nuplan_dataroot_may_be_the_split_folder(nuplan):
    root, truth = nuplan
    reader = open_reader("nuplan", root / "splits" / "mini")
    assert reader.sensor_root == truth["sensor_root"] and len(reader.scene_names()) == 2


def test_nuplan_pickled_column_is_read_safely(nuplan, tmp_path):
    root, truth = nuplan

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'ran'}",))

    con = sqlite3.connect(truth["db"])
    con.execute("UPDATE camera SET intrinsic = ? WHERE channel = 'CAM_B0'", (pickle.dumps(Payload()),))
    con.execute("UPDATE camera SET rotation = ? WHERE channel = 'CAM_F0'", (pickle.dumps(np.zeros(4))[:-9],))
    con.commit()
    con.close()
    with pytest.raises(ConverterError) as info:
        convert(ConvertConfig("nuplan", root, tmp_path / "a.h5", on_error="stop"))
    assert not (tmp_path / "ran").exists()
    message = str(info.value)
    assert message.startswith(str(truth["db"])) and "camera CAM_" in message and "pickle" in message
    summary = convert(ConvertConfig("nuplan", root, tmp_path / "b.h5"))
    assert summary.frames == 0 and len(summary.skipped) == 4


def test_interrupted_run_resumes(nuplan, tmp_path):
    from converters.jobs.progress import SceneProgress

    class CtrlCAfterFirstScene(SceneProgress):
        def scene_done(self, scene, frames, skipped):
            raise KeyboardInterrupt

    root, _ = nuplan
    out = tmp_path / "a.h5"
    with pytest.raises(KeyboardInterrupt):
        convert(ConvertConfig("nuplan", root, out), CtrlCAfterFirstScene())
    assert not out.exists()
    summary = convert(ConvertConfig("nuplan", root, out))
    assert (summary.resumed, summary.frames, len(OccDataset(out))) == (1, 2, 4)
    assert not (tmp_path / "a.h5.parts").exists()
