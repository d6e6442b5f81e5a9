"""Voxel metrics: the fast kernels against plain per-frame loops written here, on random and real data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from b2s_core.metrics import (
    MetricsError,
    OccupancyEvaluator,
    confusion_matrix,
    confusion_matrix_reference,
    geometry_iou,
    get_protocol,
    mean_iou,
    per_class_iou,
)
from b2s_core.taxonomy import IGNORE_INDEX

SHAPE = (12, 10, 4)


def straightforward_scores(frames, taxonomy, mask_name):
    """Independent plain implementation: per frame, per class, count TP / FP / FN over the scored voxels."""
    K, free = taxonomy.num_labels, taxonomy.free_index
    tp, fp, fn = np.zeros(K), np.zeros(K), np.zeros(K)
    geo = np.zeros(3)  # tp, fp, fn of occupied
    for gt, pred, masks in frames:
        scored = np.ones(gt.shape, dtype=bool) if mask_name == "none" else masks[mask_name].astype(bool)
        scored = scored & (gt != IGNORE_INDEX)
        for c in range(K):
            g = (gt == c) & scored
            p = (pred == c) & scored
            tp[c] += np.sum(g & p)
            fp[c] += np.sum(~g & p)
            fn[c] += np.sum(g & ~p)
        g = (gt != free) & scored
        p = (pred != free) & scored
        geo += [np.sum(g & p), np.sum(~g & p), np.sum(g & ~p)]
    ious = {}
    for c in taxonomy.eval_classes:
        union = tp[c] + fp[c] + fn[c]
        ious[c] = 100.0 * tp[c] / union if union > 0 else math.nan
    present = [v for v in ious.values() if not math.isnan(v)]
    miou = sum(present) / len(present) if present else math.nan
    return ious, miou, 100.0 * geo[0] / geo.sum()


def random_frames(rng, taxonomy, n, shape=SHAPE, ignore_fraction=0.0):
    frames = []
    K = taxonomy.num_labels
    for _ in range(n):
        gt = rng.integers(0, K, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.5] = taxonomy.free_index  # mostly free, as real scenes
        if ignore_fraction:
            gt[rng.random(shape) < ignore_fraction] = IGNORE_INDEX
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, K, shape)).astype(np.uint8)
        pred[pred == IGNORE_INDEX] = taxonomy.free_index
        masks = {"camera": rng.random(shape) < 0.7, "lidar": rng.random(shape) < 0.5}
        frames.append((gt, pred, masks))
    return frames


def evaluate_frames(frames, protocol, batch=2):
    evaluator = OccupancyEvaluator(protocol)
    for start in range(0, len(frames), batch):
        chunk = frames[start:start + batch]
        evaluator.add_batch(
            np.stack([f[0] for f in chunk]), np.stack([f[1] for f in chunk]),
            mask_camera=np.stack([f[2]["camera"] for f in chunk]), mask_lidar=np.stack([f[2]["lidar"] for f in chunk]),
        )
    return evaluator.result()


def assert_matches(result, expected):
    ious, miou, geo = expected
    np.testing.assert_allclose(result.iou, [ious[c] for c in result.class_labels], rtol=1e-12, equal_nan=True)
    assert result.miou == pytest.approx(miou, rel=1e-12)
    assert result.geometry_iou == pytest.approx(geo, rel=1e-12)


# -- kernels ----------------------------------------------------------------------------------
def test_confusion_matches_reference_numpy_and_torch():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 18, (3, *SHAPE)).astype(np.uint8)
    pred = rng.integers(0, 18, (3, *SHAPE)).astype(np.uint8)
    valid = rng.random(gt.shape) < 0.6
    expected = confusion_matrix_reference(gt, pred, 18, valid)
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 18, valid), expected)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(gt), torch.from_numpy(pred), 18, torch.from_numpy(valid)), expected)
    assert expected.sum() == valid.sum()
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 18), confusion_matrix_reference(gt, pred, 18))
    gt[rng.random(gt.shape) < 0.2] = IGNORE_INDEX  # ignored ground truth is never counted
    expected = confusion_matrix_reference(gt, pred, 18, valid, ignore_index=IGNORE_INDEX)
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 18, valid, ignore_index=IGNORE_INDEX), expected)
    np.testing.assert_array_equal(
        confusion_matrix(torch.from_numpy(gt), torch.from_numpy(pred), 18, torch.from_numpy(valid), ignore_index=IGNORE_INDEX), expected
    )
    assert expected.sum() == np.sum(valid & (gt != IGNORE_INDEX))


def test_out_of_range_labels_are_refused_unless_unscored():
    gt = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    pred[0, 0, 0] = 20
    with pytest.raises(MetricsError, match="predicted label 20"):
        confusion_matrix(gt, pred, 18)
    valid = np.ones(SHAPE, bool)
    valid[0, 0, 0] = False
    assert confusion_matrix(gt, pred, 18, valid).sum() == valid.sum()
    gt[1, 1, 1] = 30
    with pytest.raises(MetricsError, match="ground-truth label 30"):
        confusion_matrix(gt, np.zeros(SHAPE, np.uint8), 18, ignore_index=IGNORE_INDEX)
    with pytest.raises(MetricsError, match="different shapes"):
        confusion_matrix(gt, pred[:-1], 18)


def test_iou_edge_cases():
    cm = np.zeros((3, 3), np.int64)
    assert np.all(np.isnan(per_class_iou(cm)))
    assert math.isnan(mean_iou(cm, [0, 1]))
    cm[0, 0] = 5  # class 0 perfect, class 1 absent on both sides (skipped), class 2 = free
    cm[2, 1] = 5  # free predicted as class 1: class 1 gets IoU 0 and counts in the mean
    assert per_class_iou(cm)[0] == 100.0
    assert mean_iou(cm, [0, 1]) == 50.0
    assert geometry_iou(cm, free_index=2) == 50.0


# -- protocols against the straightforward implementation ---------------------------------------
@pytest.mark.parametrize("mask", ["camera", "lidar", "none"])
def test_occ3d_protocol_matches_straightforward(mask):
    protocol = get_protocol("occ3d", mask)
    frames = random_frames(np.random.default_rng(1), protocol.taxonomy, 5)
    assert_matches(evaluate_frames(frames, protocol), straightforward_scores(frames, protocol.taxonomy, mask))


@pytest.mark.parametrize("name", ["openoccupancy", "openscene"])
def test_ignore_protocols_match_straightforward(name):
    protocol = get_protocol(name)
    frames = random_frames(np.random.default_rng(2), protocol.taxonomy, 4, ignore_fraction=0.1)
    result = evaluate_frames(frames, protocol, batch=3)
    assert_matches(result, straightforward_scores(frames, protocol.taxonomy, "none"))
    assert len(result.iou) == (16 if name == "openoccupancy" else 8)


def test_openscene_unused_slots_are_not_averaged():
    protocol = get_protocol("openscene")
    gt = np.full((1, *SHAPE), 16, np.uint8)
    gt[0, :2] = 0  # vehicle
    pred = gt.copy()
    pred[0, 5] = 1  # an unused slot predicted: costs geometry IoU, not the mean of the 8 classes
    evaluator = OccupancyEvaluator(protocol)
    evaluator.add_batch(gt, pred)
    result = evaluator.result()
    assert result.miou == 100.0
    assert result.geometry_iou == pytest.approx(100 * 2 / 3)


# -- the real Occ3D sample ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def occ3d_real(occ3d_sample):
    data = np.load(occ3d_sample)
    return data["semantics"], {"camera": data["mask_camera"].astype(bool), "lidar": data["mask_lidar"].astype(bool)}


@pytest.mark.parametrize("mask", ["camera", "lidar", "none"])
def test_real_occ3d_against_itself_all_free_and_noise(occ3d_real, mask):
    gt, masks = occ3d_real
    protocol = get_protocol("occ3d", mask)

    def run(pred):
        evaluator = OccupancyEvaluator(protocol)
        evaluator.add_batch(gt[None], pred[None], mask_camera=masks["camera"][None], mask_lidar=masks["lidar"][None])
        return evaluator.result()

    perfect = run(gt)
    assert perfect.miou == 100.0 and perfect.geometry_iou == 100.0
    present = set(np.unique(gt[masks[mask]] if mask != "none" else gt)) - {17}
    assert {c for c, v in zip(perfect.class_labels, perfect.iou) if not math.isnan(v)} == present

    all_free = run(np.full_like(gt, 17))
    assert all_free.miou == 0.0 and all_free.geometry_iou == 0.0

    rng = np.random.default_rng(3)
    noisy = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, 18, gt.shape), gt).astype(np.uint8)
    frames = [(gt, noisy, masks)]
    result = run(noisy)
    assert_matches(result, straightforward_scores(frames, protocol.taxonomy, mask))
    assert 0 < result.miou < 100


def test_binary_decoder_iou():
    protocol = get_protocol("occ3d", "none")
    gt = np.full((1, *SHAPE), 17, np.uint8)
    gt[0, :4] = 4  # 4 * 10 * 4 = 160 occupied
    binary = np.zeros(gt.shape, bool)
    binary[0, 2:6] = True  # 80 right, 80 false positive, 80 missed
    evaluator = OccupancyEvaluator(protocol)
    evaluator.add_batch(gt, gt, binary_pred=binary)
    assert evaluator.result().binary_iou == pytest.approx(100 * 80 / 240)


def test_missing_mask_is_a_clear_error():
    evaluator = OccupancyEvaluator(get_protocol("occ3d", "camera"))
    gt = np.zeros((1, *SHAPE), np.uint8)
    with pytest.raises(MetricsError, match="mask_camera"):
        evaluator.add_batch(gt, gt)


def test_result_json_has_no_nan():
    import json

    protocol = get_protocol("occ3d", "none")
    evaluator = OccupancyEvaluator(protocol)
    gt = np.full((1, *SHAPE), 17, np.uint8)
    gt[0, 0] = 4
    evaluator.add_batch(gt, gt)
    text = json.dumps(evaluator.result().to_dict(), allow_nan=False)
    assert '"miou": 100.0' in text
