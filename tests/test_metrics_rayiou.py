"""RayIoU: the vectorised marcher against the per-ray loop, hand-made scenes, and the real Occ3D sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from b2s_core.grids import VoxelGrid, get_grid
from b2s_core.metrics import (
    OccupancyEvaluator,
    RayIoUAccumulator,
    first_hits,
    first_hits_reference,
    get_protocol,
    lidar_ray_directions,
    ray_origins,
)

SMALL = VoxelGrid((-4.0, -4.0, -1.0), (4.0, 4.0, 2.2), (0.4, 0.4, 0.4), "small")  # 20 x 20 x 8


def test_ray_pattern():
    directions = lidar_ray_directions()
    assert directions.shape == (39 * 360, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    elevation = np.arcsin(directions[::360, 2])
    assert elevation[0] == pytest.approx(-math.pi / 4)  # the steepest beam: pi/2 - atan(1)
    assert elevation[-1] >= 0.21 > elevation[-2]


def test_vectorised_march_equals_per_ray_loop():
    rng = np.random.default_rng(0)
    occupied = rng.random((2, *SMALL.shape)) < 0.04
    origins = np.array([[0.1, 0.2, 1.0], [1.3, -0.7, 0.5], [-9.0, 0.3, 0.3], [0.0, 0.0, 5.0]])  # two start outside
    directions = np.concatenate([lidar_ray_directions(24.0), [[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]])
    flat, depth = first_hits(occupied, origins, directions, SMALL)
    flat_ref, depth_ref = first_hits_reference(occupied, origins, directions, SMALL)
    np.testing.assert_array_equal(flat, flat_ref)
    np.testing.assert_array_equal(depth, depth_ref)
    assert 0.2 < (flat >= 0).mean() < 1.0  # both hits and misses are exercised


def test_depth_of_a_wall():
    occupied = np.zeros((1, *SMALL.shape), bool)
    occupied[0, 15] = True  # the plane x in [2.0, 2.4)
    origin = np.array([[0.1, 0.0, 0.5]])
    flat, depth = first_hits(occupied, origin, np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]), SMALL)
    assert depth[0, 0] == pytest.approx(1.9)
    i, j, k = np.unravel_index(flat[0, 0], SMALL.shape)
    assert (i, j, k) == (15, 10, 3)
    assert flat[0, 1] == -1 and math.isinf(depth[0, 1])


def straightforward_rayiou(gt_class, gt_depth, pred_class, pred_depth, classes, thresholds=(1, 2, 4)):
    """Plain per-ray loop of SparseOcc's counting."""
    out = {}
    for t in thresholds:
        ious = []
        for c in classes:
            tp = gt_n = pred_n = 0
            for g, gd, p, pd in zip(gt_class, gt_depth, pred_class, pred_depth):
                if g not in classes:
                    continue
                gt_n += g == c
                pred_n += p == c
                tp += (g == c) and (p == c) and abs(gd - pd) < t
            union = gt_n + pred_n - tp
            ious.append(100.0 * tp / union if union else math.nan)
        out[t] = ious
    return out


def test_counting_matches_per_ray_loop():
    rng = np.random.default_rng(1)
    n, classes = 500, (0, 1, 2)
    gt_class = rng.integers(0, 4, n)  # 3 = free: not scored
    pred_class = np.where(rng.random(n) < 0.7, gt_class, rng.integers(0, 4, n))
    gt_depth = rng.uniform(0, 30, n)
    pred_depth = gt_depth + rng.normal(0, 2, n)
    acc = RayIoUAccumulator(4, classes, free_index=3)
    acc.add_rays(gt_class, gt_depth, pred_class, pred_depth)
    expected = straightforward_rayiou(gt_class, gt_depth, pred_class, pred_depth, classes)
    table = acc.per_class()
    for j, t in enumerate((1, 2, 4)):
        np.testing.assert_allclose(table[j, list(classes)], expected[t])
    result = acc.result()
    assert result["mean"] == pytest.approx(np.mean([expected[t] for t in (1, 2, 4)]))


def test_depth_thresholds_on_a_shifted_wall():
    gt = np.full(SMALL.shape, 17, np.uint8)
    gt[15] = 4  # car wall at x = 2.0 m
    pred = np.full(SMALL.shape, 17, np.uint8)
    pred[12] = 4  # same class 1.2 m nearer
    acc = RayIoUAccumulator(18, range(17), 17)
    acc.add_frame(gt, pred, np.array([[-2.0, 0.0, 0.5]]), SMALL, directions=np.array([[1.0, 0.0, 0.0]]))
    result = acc.result()
    assert result["at"] == {1.0: 0.0, 2.0: 100.0, 4.0: 100.0}


def test_ray_origins_from_poses():
    grid = get_grid("occ3d")
    poses = np.repeat(np.eye(4)[None], 12, axis=0)
    poses[:, 0, 3] = np.arange(12) * 5.0  # driving along x, 5 m per frame
    lidar = np.tile([[1.0, 0.0, 1.8]], (12, 1))
    origins = ray_origins(poses, lidar, index=3, grid=grid)
    # frames at x = -15 .. 35 relative + 1 m lidar offset: -14, -9, ... 36 (11 within |x| < 39: all but one)
    assert origins.shape == (8, 3)
    np.testing.assert_allclose(origins[:, 1:], [[0.0, 1.8]] * 8)
    assert origins[0, 0] == pytest.approx(-14.0) and origins[-1, 0] == pytest.approx(36.0)
    single = ray_origins(poses[:1], lidar[:1], index=0, grid=grid)
    np.testing.assert_allclose(single, [[1.0, 0.0, 1.8]])


def test_real_occ3d_rayiou(occ3d_sample):
    gt = np.load(occ3d_sample)["semantics"]
    grid = get_grid("occ3d")
    origins = np.array([[0.986, 0.0, 1.84], [-6.0, 0.5, 1.84]])
    directions = lidar_ray_directions(6.0)
    protocol = get_protocol("occ3d", "none")

    def run(pred):
        evaluator = OccupancyEvaluator(protocol, grid=grid, rayiou=True, ray_directions=directions)
        evaluator.add_batch(gt[None], pred[None], origins=[origins])
        return evaluator.result()

    perfect = run(gt)
    assert perfect.rayiou == 100.0 and perfect.rays > 1000
    assert run(np.full_like(gt, 17)).rayiou == 0.0
    # vectorised and per-ray marching agree on the real scene too
    occupied = np.stack([gt != 17])
    sub = directions[::7]
    flat, depth = first_hits(occupied, origins, sub, grid)
    flat_ref, depth_ref = first_hits_reference(occupied, origins, sub, grid)
    np.testing.assert_array_equal(flat, flat_ref)
    np.testing.assert_array_equal(depth, depth_ref)
    # a prediction one voxel lower than the truth: classes kept, depths off by well under 1 m for most rays
    lowered = np.concatenate([gt[:, :, 1:], np.full_like(gt[:, :, :1], 17)], axis=2)
    shifted = run(lowered)
    assert 0 < shifted.rayiou_at["1"] < shifted.rayiou_at["4"] < 100
