"""``b2s evaluate`` from files: equals plain per-frame loops, pairs frames by token, fails clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _eval_data import SMALL, make_frames, prediction_of, write_file
from test_metrics import straightforward_scores
from typer.testing import CliRunner

from b2s_core.apps.evaluate import EvaluateConfig, EvaluateError, evaluate_files, render_table, write_json
from b2s_core.grids import get_grid
from b2s_core.metrics import OccupancyEvaluator, get_protocol, lidar_ray_directions, ray_origins
from b2s_core.records import OccFrame
from b2s_core.taxonomy import IGNORE_INDEX, OCC3D, OPENOCCUPANCY, OPENSCENE

NO_RAYS = EvaluateConfig(rayiou=False, batch_size=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A ground-truth file of two scenes and a predictions file with its scenes in the other order."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    scenes = {"scene-a": make_frames(rng, "scene-a", 3), "scene-b": make_frames(rng, "scene-b", 2)}
    data = write_file(root / "gt.h5", scenes)
    predictions = {name: [prediction_of(f, rng) for f in frames] for name, frames in scenes.items()}
    pred = write_file(root / "pred.h5", {"scene-b": predictions["scene-b"], "scene-a": predictions["scene-a"]})
    return data, pred, scenes, predictions


def plain_frames(scenes, predictions):
    out = []
    for name in scenes:
        for truth, guess in zip(scenes[name], predictions[name]):
            out.append((truth.semantics, guess.semantics, {"camera": truth.mask_camera, "lidar": truth.mask_lidar}))
    return out


@pytest.mark.parametrize("mask", [None, "camera", "lidar", "none"])
def test_scores_equal_straightforward_loops(files, mask):
    data, pred, scenes, predictions = files
    result = evaluate_files(data, pred, EvaluateConfig(mask=mask, rayiou=False, batch_size=2))
    ious, miou, geo = straightforward_scores(plain_frames(scenes, predictions), OCC3D, mask or "camera")
    assert result.mask == (mask or "camera") and result.frames == 5
    np.testing.assert_allclose(result.iou, [ious[c] for c in result.class_labels], rtol=1e-12, equal_nan=True)
    assert result.miou == pytest.approx(miou, rel=1e-12)
    assert result.geometry_iou == pytest.approx(geo, rel=1e-12)
    # binary decoder: occupied IoU of binary_pred against ground-truth occupancy on the same voxels
    tp = fp = fn = 0
    for name in scenes:
        for truth, guess in zip(scenes[name], predictions[name]):
            scored = np.ones(truth.semantics.shape, bool) if mask == "none" else getattr(truth, f"mask_{mask or 'camera'}")
            g, p = truth.occupancy & scored, guess.binary_pred & scored
            tp, fp, fn = tp + np.sum(g & p), fp + np.sum(~g & p), fn + np.sum(g & ~p)
    assert result.binary_iou == pytest.approx(100 * tp / (tp + fp + fn), rel=1e-12)


def test_rayiou_uses_the_scene_poses(files):
    data, pred, scenes, predictions = files
    config = EvaluateConfig(mask="none", rayiou=True, ray_azimuth_step=20.0, batch_size=3)
    result = evaluate_files(data, pred, config)
    # the same numbers by hand: origins from the scene's poses and LiDAR origins, frame by frame
    directions = lidar_ray_directions(20.0)
    evaluator = OccupancyEvaluator(get_protocol("occ3d", "none"), grid=SMALL, rayiou=True, ray_directions=directions)
    for name in scenes:
        poses = np.stack([f.global_from_ego for f in scenes[name]])
        lidar = np.stack([f.lidar_origin for f in scenes[name]])
        for t, (truth, guess) in enumerate(zip(scenes[name], predictions[name])):
            origins = ray_origins(poses, lidar, t, SMALL)
            evaluator.add_batch(truth.semantics[None], guess.semantics[None], origins=[origins])
    expected = evaluator.result()
    assert result.rays == expected.rays > 0
    assert result.rayiou == pytest.approx(expected.rayiou)
    assert result.rayiou_at == pytest.approx(expected.rayiou_at)


def test_ground_truth_against_itself_and_all_free(tmp_path, files):
    data, _, scenes, _ = files
    same = write_file(tmp_path / "same.h5", scenes)
    perfect = evaluate_files(data, same, EvaluateConfig(ray_azimuth_step=30.0))
    assert perfect.miou == 100.0 and perfect.geometry_iou == 100.0 and perfect.rayiou == 100.0
    assert perfect.binary_iou is None  # the file has no binary-decoder output
    empty = {
        name: [OccFrame(f.scene, f.token, f.timestamp, f.global_from_ego, [], np.zeros(SMALL.shape, bool),
                        np.full(SMALL.shape, 17, np.uint8)) for f in frames]
        for name, frames in scenes.items()
    }
    free = evaluate_files(data, write_file(tmp_path / "free.h5", empty), EvaluateConfig(ray_azimuth_step=30.0))
    assert free.miou == 0.0 and free.geometry_iou == 0.0 and free.rayiou == 0.0


def test_real_occ3d_sample_through_files(tmp_path, occ3d_sample):
    sample = np.load(occ3d_sample)
    gt = sample["semantics"]
    grid = get_grid("occ3d")
    frame = OccFrame("real", "29796060110c4163b07f06eff4af0753", 0, np.eye(4), [], gt != 17, gt,
                     mask_lidar=sample["mask_lidar"].astype(bool), mask_camera=sample["mask_camera"].astype(bool))
    data = write_file(tmp_path / "real.h5", {"real": [frame]}, grid=grid)
    rng = np.random.default_rng(4)
    noisy = np.where(rng.random(gt.shape) < 0.15, rng.integers(0, 18, gt.shape), gt).astype(np.uint8)
    guess = OccFrame("real", frame.token, 0, np.eye(4), [], noisy != 17, noisy)
    pred = write_file(tmp_path / "real-pred.h5", {"real": [guess]}, grid=grid)
    masks = {"camera": frame.mask_camera, "lidar": frame.mask_lidar}
    for mask in ("camera", "lidar", "none"):
        result = evaluate_files(data, pred, EvaluateConfig(mask=mask, rayiou=False))
        ious, miou, geo = straightforward_scores([(gt, noisy, masks)], OCC3D, mask)
        np.testing.assert_allclose(result.iou, [ious[c] for c in result.class_labels], rtol=1e-12, equal_nan=True)
        assert result.miou == pytest.approx(miou, rel=1e-12) and result.geometry_iou == pytest.approx(geo, rel=1e-12)
    perfect = evaluate_files(data, data, EvaluateConfig(ray_azimuth_step=10.0))
    assert perfect.miou == 100.0 and perfect.rayiou == 100.0 and perfect.rays > 1000


def test_mismatched_files_fail_clearly(tmp_path, files):
    data, _, scenes, predictions = files
    partial = write_file(tmp_path / "partial.h5", {"scene-a": predictions["scene-a"]})
    with pytest.raises(EvaluateError, match="no prediction for 2 of 5 frames"):
        evaluate_files(data, partial, NO_RAYS)
    other = make_frames(np.random.default_rng(1), "x", 1, taxonomy=OPENSCENE)
    wrong_taxonomy = write_file(tmp_path / "openscene.h5", {"x": other}, taxonomy=OPENSCENE)
    with pytest.raises(EvaluateError, match="taxonomy 'openscene' differs"):
        evaluate_files(data, wrong_taxonomy, NO_RAYS)
    with pytest.raises(EvaluateError, match="file not found"):
        evaluate_files(data, tmp_path / "missing.h5", NO_RAYS)
    no_masks = write_file(tmp_path / "nomask.h5", {"m": make_frames(np.random.default_rng(2), "m", 1, masks=False)})
    with pytest.raises(EvaluateError, match="mask_lidar"):
        evaluate_files(no_masks, no_masks, EvaluateConfig(mask="lidar", rayiou=False))
    assert evaluate_files(no_masks, no_masks, NO_RAYS).mask == "none"  # default mask falls back when absent


def test_table_and_json(tmp_path, files):
    from rich.console import Console

    data, pred, _, _ = files
    result = evaluate_files(data, pred, EvaluateConfig(ray_azimuth_step=30.0))
    console = Console(record=True, width=160)
    console.print(render_table(result))
    text = console.export_text()
    for word in ("driveable_surface", "mIoU", "geometry IoU", "binary-decoder IoU", "RayIoU@1", "RayIoU@4"):
        assert word in text
    saved = json.loads(write_json(result, tmp_path / "scores.json").read_text())
    assert saved["miou"] == pytest.approx(result.miou) and saved["frames"] == 5
    assert set(saved["rayiou_at"]) == {"1", "2", "4"} and len(saved["iou"]) == 17


def test_cli_evaluate(tmp_path, files):
    from b2s_cli.app import app

    data, pred, _, _ = files
    out = tmp_path / "cli.json"
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--predictions", str(pred), "--out", str(out),
                                 "--mask", "lidar", "--ray-step", "45"])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and json.loads(out.read_text())["mask"] == "lidar"
    bad = runner.invoke(app, ["evaluate", "--data", str(data), "--predictions", str(tmp_path / "nope.h5")])
    assert bad.exit_code == 1 and "nope.h5" in bad.output and "Traceback" not in bad.output
    both = runner.invoke(app, ["evaluate", "--data", str(data)])
    assert both.exit_code == 1 and "exactly one of --predictions and --checkpoint" in both.output


@pytest.mark.parametrize("taxonomy", [OPENOCCUPANCY, OPENSCENE])
def test_ignore_protocols_through_files(tmp_path, taxonomy):
    rng = np.random.default_rng(8)
    frames = make_frames(rng, "s", 3, taxonomy=taxonomy, masks=False)
    for frame in frames:
        frame.semantics[rng.random(SMALL.shape) < 0.05] = IGNORE_INDEX  # noise / invalid: never scored
        frame.occupancy = frame.semantics != taxonomy.free_index
    guesses = [prediction_of(f, rng, taxonomy=taxonomy) for f in frames]
    for guess in guesses:
        guess.semantics[guess.semantics == IGNORE_INDEX] = taxonomy.free_index
        guess.occupancy = guess.semantics != taxonomy.free_index
    data = write_file(tmp_path / "gt.h5", {"s": frames}, taxonomy=taxonomy)
    pred = write_file(tmp_path / "pred.h5", {"s": guesses}, taxonomy=taxonomy)
    result = evaluate_files(data, pred, EvaluateConfig(ray_azimuth_step=30.0))
    assert result.protocol == taxonomy.name and result.mask == "none"
    plain = [(f.semantics, g.semantics, {}) for f, g in zip(frames, guesses)]
    ious, miou, geo = straightforward_scores(plain, taxonomy, "none")
    np.testing.assert_allclose(result.iou, [ious[c] for c in result.class_labels], rtol=1e-12, equal_nan=True)
    assert result.miou == pytest.approx(miou, rel=1e-12) and result.geometry_iou == pytest.approx(geo, rel=1e-12)
    assert 0 < result.rayiou < 100
