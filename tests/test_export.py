"""``b2s export`` (Occ3D, per-token npz, OpenOccupancy) and ``b2s evaluate --predictions DIR``.

What the official tools write and read (the fixtures below follow them, not b2s):
* Occ3D ``gts/<scene>/<token>/labels.npz``, keys semantics / mask_lidar / mask_camera, uint8
  (200, 200, 16): CVPR2023-3D-Occupancy-Prediction README "Dataset" and
  ``projects/mmdet3d_plugin/datasets/pipelines/loading.py: LoadOccGTFromFile``; the real sample in
  shared/data/occ3d-sample.
* per-token predictions: SparseOcc README ("np.savez_compressed(save_path, pred=sem_pred)") and
  ``ray_metrics.py: main`` (``<pred_dir>/<token>.npz``, ``['pred']``); the CVPR 2023 challenge
  ``nuscenes_occ.py: format_results`` (``np.savez_compressed(save_path, occ_pred.astype(np.uint8))``,
  key ``arr_0``); FlashOCC ``nuscenes_dataset_occ.py: evaluate`` with ``show_dir``
  (``<scene>/<token>/pred.npz`` holding ``pred``, ``gt`` and ``sample_token``).
* OpenOccupancy ``scene_<scene_token>/occupancy/<lidar_token>.npy`` rows ``[z, y, x, cls]`` in the
  LIDAR_TOP frame: ``projects/occ_plugin/datasets/pipelines/loading.py: LoadOccupancy.__call__``.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from _convert_data import wrap_nuscenes_keyframe
from _eval_data import SMALL, make_frames, prediction_of, write_file
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.apps.evaluate import EvaluateConfig, EvaluateError, evaluate_files
from b2s_core.apps.export import FORMATS, ExportError, export, openoccupancy_rows
from b2s_core.grids import GRID_PRESETS, VoxelGrid
from b2s_core.occfile import OccDataset, OccFormatError, OccWriter, ResumableWriter
from b2s_core.records import OccFrame
from b2s_core.taxonomy import OCC3D, OPENOCCUPANCY
from converters.jobs.convert import ConvertConfig, convert
from converters.readers.labels import read_openoccupancy

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _one_error_line(output: str) -> bool:
    """The output is one ``error: ...`` line (a transient progress bar may leave a blank line)."""
    lines = [line for line in output.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ")


def _scores(result) -> dict:
    """Every number of an evaluation (the JSON minus where and how long it ran)."""
    scores = result.to_dict()
    scores.pop("extra", None)
    return scores


# -- the real Occ3D sample: convert -> export is bit-exact --------------------------------------------
@pytest.fixture(scope="module")
def real_h5(nuscenes_keyframe, occ3d_sample, tmp_path_factory) -> Path:
    """The real key frame converted with the real Occ3D labels (as tests/test_convert.py does)."""
    root = tmp_path_factory.mktemp("real")
    frame = wrap_nuscenes_keyframe(nuscenes_keyframe, root / "nuscenes")
    labels = root / "occ3d" / "gts" / "scene-0061" / frame["sample_token"]
    labels.mkdir(parents=True)
    (labels / "labels.npz").symlink_to(occ3d_sample)
    out = root / "real.h5"
    convert(ConvertConfig("nuscenes", root / "nuscenes", out, labels=f"occ3d:{root / 'occ3d'}", store_points=False))
    return out


def test_real_occ3d_sample_round_trips_bit_exactly(real_h5, occ3d_sample, nuscenes_keyframe, tmp_path):
    result = _run("export", "--data", str(real_h5), "--format", "occ3d", "--out", str(tmp_path / "occ3d"))
    assert result.exit_code == 0, result.output
    token = json.loads((nuscenes_keyframe / "frame.json").read_text())["sample_token"]
    written = tmp_path / "occ3d" / "gts" / "scene-0061" / token / "labels.npz"
    with np.load(occ3d_sample) as original, np.load(written) as exported:
        assert exported.files == original.files == ["semantics", "mask_lidar", "mask_camera"]
        for key in original.files:
            assert exported[key].dtype == original[key].dtype == np.uint8
            assert exported[key].shape == original[key].shape == (200, 200, 16)
            assert exported[key].tobytes() == original[key].tobytes(), key
    with zipfile.ZipFile(written) as archive:  # np.savez_compressed, like the official files
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    assert not [p for p in (tmp_path / "occ3d").rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_convert_stores_the_lidar_calibration(real_h5, nuscenes_keyframe):
    frame = OccDataset(real_h5)[0]
    lidar2ego = np.asarray(json.loads((nuscenes_keyframe / "frame.json").read_text())["lidar"]["lidar2ego"])
    assert np.allclose(frame.ego_from_lidar, lidar2ego, atol=1e-6)
    assert np.allclose(frame.lidar_origin, lidar2ego[:3, 3], atol=1e-6)


def test_real_sample_scores_100_from_its_own_npz_export(real_h5, tmp_path):
    export(real_h5, tmp_path / "npz", "npz")
    (written,) = (tmp_path / "npz").iterdir()
    with np.load(written) as npz:
        assert npz.files == ["pred"] and npz["pred"].dtype == np.uint8 and npz["pred"].shape == (200, 200, 16)
        assert np.array_equal(npz["pred"], OccDataset(real_h5)[0].semantics)
    result = evaluate_files(real_h5, tmp_path / "npz", EvaluateConfig(ray_azimuth_step=30.0))
    assert result.miou == pytest.approx(100.0) and result.rayiou == pytest.approx(100.0)


# -- evaluate a folder of per-token npz files ------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    scenes = {"scene-a": make_frames(rng, "scene-a", 3), "scene-b": make_frames(rng, "scene-b", 2)}
    data = write_file(tmp_path / "data.h5", scenes)
    predicted = {name: [prediction_of(f, rng, with_binary=False) for f in frames] for name, frames in scenes.items()}
    return data, write_file(tmp_path / "pred.h5", predicted), predicted


def _relayout(folder: Path, out: Path, layout: str, predicted) -> Path:
    """The flat <token>.npz export moved into another tool's layout."""
    for frames in predicted.values():
        for frame in frames:
            pred = np.load(folder / f"{frame.token}.npz")["pred"]
            if layout == "flashocc":  # show_dir: <scene>/<token>/pred.npz with pred, gt, sample_token
                target = out / frame.scene / frame.token / "pred.npz"
                target.parent.mkdir(parents=True)
                gt = np.empty((), dtype=object)
                gt[()] = {"semantics": "a pickled object b2s must never load"}
                np.savez_compressed(target, pred=pred, gt=gt, sample_token=frame.token)
            elif layout == "challenge":  # format_results: one unnamed array (arr_0)
                out.mkdir(exist_ok=True)
                np.savez_compressed(out / f"{frame.token}.npz", pred.astype(np.uint8))
            else:  # an Occ3D tree of labels.npz (semantics)
                target = out / "gts" / frame.scene / frame.token / "labels.npz"
                target.parent.mkdir(parents=True)
                np.savez_compressed(target, semantics=pred, mask_lidar=np.ones_like(pred), mask_camera=np.ones_like(pred))
    return out


@pytest.mark.parametrize("layout", ["sparseocc", "flashocc", "challenge", "occ3d"])
def test_npz_folder_scores_equal_the_unified_file(files, tmp_path, layout):
    data, pred_h5, predicted = files
    summary = export(pred_h5, tmp_path / "npz", "npz")
    assert summary.frames == 5 and sorted(p.name for p in (tmp_path / "npz").iterdir()) == sorted(
        f"{f.token}.npz" for frames in predicted.values() for f in frames)
    folder = tmp_path / "npz" if layout == "sparseocc" else _relayout(tmp_path / "npz", tmp_path / layout, layout, predicted)
    for mask in ("camera", "none"):
        config = EvaluateConfig(mask=mask, ray_azimuth_step=30.0)
        from_file, from_folder = evaluate_files(data, pred_h5, config), evaluate_files(data, folder, config)
        assert _scores(from_folder) == _scores(from_file)
        assert from_file.rayiou is not None and 0 < from_file.miou < 100  # the numbers compared are real ones


def test_npz_folder_has_no_binary_decoder_output(tmp_path):
    rng = np.random.default_rng(5)
    scenes = {"s": make_frames(rng, "s", 2)}
    data = write_file(tmp_path / "data.h5", scenes)
    pred = write_file(tmp_path / "pred.h5", {"s": [prediction_of(f, rng) for f in scenes["s"]]})
    export(pred, tmp_path / "npz", "npz")
    config = EvaluateConfig(rayiou=False)
    from_file, from_folder = _scores(evaluate_files(data, pred, config)), _scores(evaluate_files(data, tmp_path / "npz", config))
    assert from_file.pop("binary_iou") is not None and from_folder.pop("binary_iou") is None
    assert from_folder == from_file


def test_cli_evaluate_scores_a_folder(files, tmp_path):
    data, pred_h5, _ = files
    export(pred_h5, tmp_path / "npz", "npz")
    for predictions, out in ((pred_h5, tmp_path / "a.json"), (tmp_path / "npz", tmp_path / "b.json")):
        result = _run("evaluate", "--data", str(data), "--predictions", str(predictions), "--out", str(out), "--ray-step", "30")
        assert result.exit_code == 0, result.output
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert {k: v for k, v in a.items() if k != "extra"} == {k: v for k, v in b.items() if k != "extra"}


def _bad_folder(tmp_path, files, problem: str) -> Path:
    data, pred_h5, predicted = files
    folder = tmp_path / problem
    export(pred_h5, folder, "npz")
    victim = folder / f"{predicted['scene-b'][1].token}.npz"
    if problem == "missing":
        victim.unlink()
    elif problem == "shape":
        np.savez_compressed(victim, pred=np.zeros((200, 200, 16), np.uint8))
    elif problem == "float":
        np.savez_compressed(victim, pred=np.zeros(SMALL.shape, np.float32))
    elif problem == "label":
        np.savez_compressed(victim, pred=np.full(SMALL.shape, 18, np.uint8))
    elif problem == "pickle":
        pred = np.empty(SMALL.shape, dtype=object)
        pred[...] = 0
        np.savez_compressed(victim, pred=pred)
    elif problem == "keys":
        np.savez_compressed(victim, a=np.zeros(SMALL.shape, np.uint8), b=np.zeros(SMALL.shape, np.uint8))
    elif problem == "twice":
        frame = predicted["scene-b"][1]
        (folder / frame.scene / frame.token).mkdir(parents=True)
        shutil.copy(victim, folder / frame.scene / frame.token / "pred.npz")
    elif problem == "zip":
        victim.write_bytes(b"not a zip")
    elif problem == "npy":
        with open(victim, "wb") as handle:
            np.save(handle, np.zeros(SMALL.shape, np.uint8))
    elif problem == "corrupt":
        np.savez_compressed(victim, pred=np.zeros(SMALL.shape, np.uint8))
        data = bytearray(victim.read_bytes())
        data[60:200] = bytes(140)  # inside the deflated member: the zip directory still reads
        victim.write_bytes(bytes(data))
    return folder


@pytest.mark.parametrize("problem,message", [
    ("missing", r"no prediction for 1 of 5 frames"),
    ("shape", r"'pred' has shape \(200, 200, 16\), the data grid is \(20, 20, 8\)"),
    ("float", r"holds float32 values"),
    ("label", r"holds label 18, outside the taxonomy's 0..17"),
    ("pickle", r"not a readable .npz prediction file"),
    ("keys", r"no prediction array: expected 'pred'"),
    ("twice", r"two predictions for token scene-b-1"),
    ("zip", r"not a readable .npz prediction file"),
    ("npy", r"a bare .npy array, not an .npz archive"),
    ("corrupt", r"not a readable .npz prediction file"),
])
def test_bad_prediction_folders_fail_with_one_line(files, tmp_path, problem, message):
    data, _, _ = files
    folder = _bad_folder(tmp_path, files, problem)
    with pytest.raises((EvaluateError, ExportError), match=message):
        evaluate_files(data, folder, EvaluateConfig(rayiou=False))
    result = _run("evaluate", "--data", str(data), "--predictions", str(folder), "--out", str(tmp_path / "s.json"), "--no-rayiou")
    assert result.exit_code == 1 and _one_error_line(result.output)
    assert not (tmp_path / "s.json").exists()


# -- export: guards, names, missing fields ---------------------------------------------------------
def test_existing_export_is_guarded_and_overwrite_keeps_other_files(files, tmp_path):
    _, pred_h5, _ = files
    out = tmp_path / "out"
    assert _run("export", "--data", str(pred_h5), "--format", "npz", "--out", str(out)).exit_code == 0
    (out / "notes.txt").write_text("mine")
    victim = out / "scene-a-0.npz"
    before = victim.read_bytes()
    victim.write_bytes(b"stale")
    result = _run("export", "--data", str(pred_h5), "--format", "npz", "--out", str(out))
    assert result.exit_code == 1 and "already holds" in result.output and "--overwrite" in result.output
    assert victim.read_bytes() == b"stale"  # refused before writing anything
    assert _run("export", "--data", str(pred_h5), "--format", "npz", "--out", str(out), "--overwrite").exit_code == 0
    assert victim.read_bytes() == before and (out / "notes.txt").read_text() == "mine"
    # A folder holding other frames' files only is not this export's output.
    other = tmp_path / "other"
    other.mkdir()
    (other / "unrelated.npz").write_bytes(b"x")
    assert _run("export", "--data", str(pred_h5), "--format", "npz", "--out", str(other)).exit_code == 0
    assert (other / "unrelated.npz").read_bytes() == b"x" and (other / "scene-b-1.npz").is_file()


def test_format_choices_are_listed_and_checked(files, tmp_path):
    _, pred_h5, _ = files
    result = runner.invoke(app, ["export", "--data", str(pred_h5), "--format", "bevdet", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "occ3d" in result.output and "openoccupancy" in result.output
    assert "npz" in FORMATS and not (tmp_path / "o").exists()


@pytest.mark.parametrize("token,scene,formats", [("../escape", "scene-a", ("occ3d", "npz")), ("a\\b", "scene-a", ("npz",)),
                                                 ("ok-token", "sub/dir", ("occ3d",)), ("ok-token", "..", ("occ3d",))])
def test_names_that_leave_the_output_folder_are_refused(tmp_path, token, scene, formats):
    rng = np.random.default_rng(1)
    frame = make_frames(rng, scene, 1)[0]
    frame.token = token
    data = write_file(tmp_path / "d.h5", {scene: [frame]})
    for fmt in formats:
        out = tmp_path / "deep" / "out"
        result = _run("export", "--data", str(data), "--format", fmt, "--out", str(out))
        assert result.exit_code == 1 and _one_error_line(result.output)
        assert "cannot name a file inside the output folder" in result.output
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["d.h5"]  # nothing written anywhere


def test_two_frames_writing_one_file_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    first, second = make_frames(rng, "a", 1)[0], make_frames(rng, "b", 1)[0]
    second.token = first.token  # one token in two scenes: one flat <token>.npz for both
    data = write_file(tmp_path / "d.h5", {"a": [first], "b": [second]})
    with pytest.raises(ExportError, match=r"frame 1 \(scene b, token a-0\) and frame 0 would both write a-0.npz"):
        export(data, tmp_path / "out", "npz")
    assert not (tmp_path / "out").exists()


def test_occ3d_export_needs_occ3d_labels_and_fills_missing_masks(tmp_path):
    rng = np.random.default_rng(2)
    occ3d = GRID_PRESETS["occ3d"]
    frames = make_frames(rng, "s", 2, grid=occ3d, masks=False)
    frames[0].mask_camera = rng.random(occ3d.shape) < 0.5
    frames[0].mask_lidar = rng.random(occ3d.shape) < 0.5
    data = write_file(tmp_path / "d.h5", {"s": frames}, grid=occ3d)
    summary = export(data, tmp_path / "out", "occ3d")
    assert summary.frames == 2 and summary.filled_masks == 1
    with np.load(tmp_path / "out" / "gts" / "s" / "s-0" / "labels.npz") as first, \
            np.load(tmp_path / "out" / "gts" / "s" / "s-1" / "labels.npz") as second:
        assert np.array_equal(first["mask_camera"], frames[0].mask_camera.astype(np.uint8))
        assert np.array_equal(second["semantics"], frames[1].semantics)
        assert second["mask_lidar"].min() == second["mask_camera"].min() == 1
    small = write_file(tmp_path / "small.h5", {"s": make_frames(rng, "s", 1)})
    with pytest.raises(ExportError, match="Occ3D files hold occ3d labels on the 200x200x16"):
        export(small, tmp_path / "o2", "occ3d")
    binary = write_file(tmp_path / "b.h5", {"s": make_frames(rng, "s", 1, semantics=False)})
    with pytest.raises(ExportError, match="has no semantic labels"):
        export(binary, tmp_path / "o3", "npz")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


# -- OpenOccupancy: back into the LiDAR frame ----------------------------------------------------------
def _openoccupancy_rows(rng) -> np.ndarray:
    """Boxes of every class and one noise voxel, as [z, y, x, cls] rows (LoadOccupancy's layout)."""
    voxels = []
    for label in range(1, 17):
        x0, y0, z0 = rng.integers(20, 480), rng.integers(20, 480), rng.integers(0, 36)
        voxels += [(z0 + dz, y0 + dy, x0 + dx, label) for dx in range(4) for dy in range(4) for dz in range(3)]
    voxels.append((10, 256, 256, 0))  # noise
    return np.unique(np.array(voxels, np.int64), axis=0)


def test_openoccupancy_export_restores_the_lidar_frame_rows(tmp_path):
    rows = _openoccupancy_rows(np.random.default_rng(4))
    np.save(tmp_path / "in.npy", rows)
    # A LiDAR turned 90 degrees, offsets of half voxels in x / y and the nuScenes 1.84 m height:
    # every voxel centre lands inside one voxel each way, so the round trip must be exact.
    ego_from_lidar = np.eye(4)
    ego_from_lidar[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    ego_from_lidar[:3, 3] = [1.0, 0.4, 1.84]
    labels = read_openoccupancy(tmp_path / "in.npy", ego_from_lidar)
    grid = GRID_PRESETS["openoccupancy"]
    frame = OccFrame(scene="scene-0001", token="sample-1", timestamp=0, global_from_ego=np.eye(4), cameras=[],
                     occupancy=labels.semantics != 0, semantics=labels.semantics, ego_from_lidar=ego_from_lidar,
                     source_tokens={"scene": "scenetoken", "lidar_sample_data": "lidartoken"})
    with OccWriter(tmp_path / "oo.h5", grid=grid, taxonomy=OPENOCCUPANCY, source="test") as writer:
        writer.write_scene("scene-0001", [frame])
    result = _run("export", "--data", str(tmp_path / "oo.h5"), "--format", "openoccupancy", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    back = np.load(tmp_path / "out" / "scene_scenetoken" / "occupancy" / "lidartoken.npy")
    assert back.dtype == np.int64 and back.shape[1] == 4
    assert np.array_equal(np.unique(back, axis=0), rows)
    # The same labels stored without calibration cannot go back to the LiDAR frame.
    frame.ego_from_lidar = None
    with OccWriter(tmp_path / "nocal.h5", grid=grid, taxonomy=OPENOCCUPANCY, source="test") as writer:
        writer.write_scene("scene-0001", [frame])
    result = _run("export", "--data", str(tmp_path / "nocal.h5"), "--format", "openoccupancy", "--out", str(tmp_path / "o2"))
    assert result.exit_code == 1 and "has no LiDAR calibration (ego_from_lidar)" in result.output
    assert not (tmp_path / "o2").exists()


def _nuscenes_lidar_top() -> np.ndarray:
    """nuScenes v1.0-mini calibrated_sensor.json, LIDAR_TOP of the n015 car: turned 90 degrees, tilted 1.4."""
    from pyquaternion import Quaternion  # what nuscenes-devkit builds calibrated_sensor rotations with

    ego_from_lidar = np.eye(4)
    rotation = Quaternion([0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817])
    ego_from_lidar[:3, :3] = rotation.rotation_matrix
    ego_from_lidar[:3, 3] = [0.943713, 0.0, 1.84023]
    return ego_from_lidar


def test_tilted_lidar_round_trip_keeps_the_rows_and_adds_no_noise(tmp_path):
    """Under the real tilted LIDAR_TOP two nearest-centre resamplings cannot be exact, but nearly
    every row comes back, and the ego voxels the LiDAR volume never covered (255 = no label there)
    do not come back as OpenOccupancy noise rows."""
    rows = _openoccupancy_rows(np.random.default_rng(4))
    np.save(tmp_path / "in.npy", rows)
    ego_from_lidar = _nuscenes_lidar_top()
    labels = read_openoccupancy(tmp_path / "in.npy", ego_from_lidar)
    assert (labels.semantics == 255).sum() > 100_000  # the uncovered ego voxels are there to be mistaken
    back = openoccupancy_rows(labels.semantics, GRID_PRESETS["openoccupancy"], ego_from_lidar)
    original = {tuple(r[:3]): r[3] for r in rows.tolist()}
    returned = {tuple(r[:3]): r[3] for r in back.tolist()}
    assert sum(returned.get(k) == v for k, v in original.items()) >= 0.98 * len(original)
    assert len(returned) <= 1.02 * len(original) and (back[:, 3] == 0).sum() == 1  # the one noise voxel


def test_openoccupancy_rows_undo_a_vertical_offset():
    """A file built with a vertical convention (label z = ego z + offset) is moved back by it."""
    grid = VoxelGrid((-51.2, -51.2, -3.2), (51.2, 51.2, 4.8), (0.2, 0.2, 0.2))
    semantics = np.zeros(grid.shape, np.uint8)
    semantics[300, 256, 20] = 4
    ego_from_lidar = np.eye(4)
    ego_from_lidar[2, 3] = 1.8  # whole voxels: exact
    plain = openoccupancy_rows(semantics, grid, ego_from_lidar)
    shifted = openoccupancy_rows(semantics, grid, ego_from_lidar, z_offset=-0.4)
    assert plain.tolist() == [[20, 256, 300, 4]]  # the ego grid is the LiDAR grid 1.8 m up: same layer
    assert shifted.tolist() == [[22, 256, 300, 4]]  # the labelled thing stood 0.4 m (2 layers) higher


# -- the format's new per-frame calibration ------------------------------------------------------------
def test_ego_from_lidar_is_optional_and_older_files_still_merge(tmp_path):
    rng = np.random.default_rng(6)
    frames = make_frames(rng, "s", 2)
    frames[0].ego_from_lidar = np.arange(16, dtype=np.float64).reshape(4, 4)
    write_file(tmp_path / "new.h5", {"s": frames})
    dataset = OccDataset(tmp_path / "new.h5")
    assert np.array_equal(dataset[0].ego_from_lidar, frames[0].ego_from_lidar) and dataset[1].ego_from_lidar is None
    # A file written before the dataset existed: read as unknown, and merged into a new file as unknown.
    old = tmp_path / "old.h5"
    write_file(old, {"t": make_frames(rng, "t", 2)})
    with h5py.File(old, "a") as h5:
        del h5["frames/ego_from_lidar"]
    assert OccDataset(old)[1].ego_from_lidar is None
    writer = ResumableWriter(tmp_path / "merged.h5", grid=SMALL, taxonomy=OCC3D, source="test", camera_names=["CAM_FRONT"])
    shutil.copy(old, writer.part_path("t"))
    shutil.copy(tmp_path / "new.h5", writer.part_path("s"))
    merged = OccDataset(writer.finalize(["s", "t"]))
    assert [f.ego_from_lidar is None for f in merged] == [False, True, True, True]
    assert np.array_equal(merged[0].ego_from_lidar, frames[0].ego_from_lidar)
    with pytest.raises(OccFormatError, match="ego_from_lidar must be 4x4"):
        bad = make_frames(rng, "u", 1)
        bad[0].ego_from_lidar = np.eye(3)
        write_file(tmp_path / "bad.h5", {"u": bad})
