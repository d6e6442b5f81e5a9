"""The discrete-event scheduler behind docs/scale.md (benchmarks/simulate_scale.py): hand-computed
makespans, conserved work, the dispatch limit and the plan's formulas (no Ray needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import simulate_scale as sim  # noqa: E402


def test_longest_first_beats_given_order_on_a_hand_computed_case():
    # 2 workers, [1, 1, 1, 1, 4]: in the given order the 4 starts last, at t=2 -> 6;
    # longest first: 4 on one worker, the four 1s on the other -> 4 (the optimum).
    durations = [1, 1, 1, 1, 4]
    assert sim.schedule(durations, 2, "given").makespan == 6
    assert sim.schedule(durations, 2, "longest").makespan == 4
    assert sim.lower_bound(durations, 2) == 4


def test_longest_first_worst_case_and_overhead():
    # Graham's LPT example: [3, 3, 2, 2, 2] on 2 workers gives 7 against the optimum 6 (3+3, 2+2+2).
    durations = [3, 3, 2, 2, 2]
    result = sim.schedule(durations, 2, "longest")
    assert result.makespan == 7
    np.testing.assert_array_equal(result.worker, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(result.start, [0, 0, 3, 3, 5])
    # an overhead of 0.5 per task: worker 0 holds 3.5 + 2.5 + 2.5 = 8.5
    assert sim.schedule(durations, 2, "longest", overhead=0.5).makespan == pytest.approx(8.5)


def test_work_is_conserved_and_every_task_runs_once():
    rng = np.random.default_rng(3)
    durations = rng.exponential(2.0, 500)
    for order in ("longest", "random", "given"):
        result = sim.schedule(durations, 7, order, overhead=0.25, seed=4)
        assert result.busy.sum() == pytest.approx(durations.sum() + 500 * 0.25)
        ends = result.start + durations + 0.25
        assert result.makespan == pytest.approx(ends.max())
        assert result.makespan >= sim.lower_bound(durations, 7, 0.25) - 1e-9
        # no worker runs two tasks at once
        for w in range(7):
            mine = np.flatnonzero(result.worker == w)
            spans = sorted(zip(result.start[mine], ends[mine]))
            assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))


def test_dispatch_limit_delays_starts():
    # 4 zero-length tasks on 4 workers, the driver handing out one per second: starts 0, 1, 2, 3
    result = sim.schedule([0, 0, 0, 0], 4, "given", dispatch=1.0)
    np.testing.assert_array_equal(result.start, [0, 1, 2, 3])
    assert result.makespan == 3


def test_random_order_is_a_permutation_and_bad_input_is_refused():
    order = sim.task_order(np.arange(50, dtype=float), "random", seed=1)
    assert sorted(order) == list(range(50)) and list(order) != list(range(50))
    np.testing.assert_array_equal(sim.task_order(np.array([1.0, 3.0, 2.0]), "longest"), [1, 2, 0])
    with pytest.raises(ValueError, match="order"):
        sim.task_order(np.ones(2), "shortest")
    with pytest.raises(ValueError, match="workers"):
        sim.schedule([1.0], 0)


def test_scene_durations_have_the_requested_mean_and_spread():
    frames, seconds = sim.scene_durations(20000, 0.5, 0.2, variable=True, seed=0)
    assert frames.min() >= 1
    assert frames.mean() == pytest.approx(sim.FRAMES_PER_SCENE, rel=0.03)
    assert frames.std() / frames.mean() == pytest.approx(sim.SCENE_LENGTH_CV, rel=0.15)
    factor = seconds / (frames * 0.5)
    assert factor.mean() == pytest.approx(1.0, rel=0.02) and factor.std() == pytest.approx(0.2, rel=0.1)
    frames, seconds = sim.scene_durations(10, 0.5, 0.0, variable=False)
    np.testing.assert_array_equal(frames, sim.FRAMES_PER_SCENE)
    np.testing.assert_allclose(seconds, sim.FRAMES_PER_SCENE * 0.5)


def test_plan_formulas():
    costs = {"stages": {"convert": {"cpu_s_per_frame": 0.1, "bytes_per_frame": 300e3, "merge_wall_s_per_frame": 0.001},
                        "build_binary": {"cpu_s_per_frame": 0.5, "bytes_per_frame": 50e3, "merge_wall_s_per_frame": 0.002},
                        "autolabel": {"cpu_s_per_frame": 1.0, "bytes_per_frame": 150e3, "merge_wall_s_per_frame": 0.003}},
             "build_binary_per_scene": {"cv": 0.0},
             "raw_blobs": {"synthetic": {"lidar_key": 1e6, "lidar_sweeps": 9e6, "cameras_key": 1e6}}}
    _, figures = sim.plan(costs, ray_overhead=0.0, dispatch=0.0)
    # Table 3: 1032 A100-hours over 320k frames x 24 epochs
    assert figures["gpu_s_per_sample"] == pytest.approx(1032 * 3600 / (320_000 * 24))
    assert figures["autolabel_paper_cpu_s"] == pytest.approx(sim.PAPER_INFER_CPU_S + 1.0 - sim.SMALL_INFER_CPU_S)
    one = figures["cores"]["8000 scenes|build-binary|512"]
    frames = one["cpu_hours"] * 3600 / 0.5
    assert one["io_s"] == pytest.approx(frames * 11e6 / (sim.STORAGE_GB_S * 1e9))
    assert one["merge_s"] == pytest.approx(frames * 0.002)
    assert one["total_s"] == pytest.approx(max(one["compute_s"], one["io_s"]) + one["merge_s"])
    # 512 cores = 16 nodes of 32, each merging its own shard at the same time
    assert one["sharded_total_s"] == pytest.approx(max(one["compute_s"], one["io_s"]) + one["merge_s"] / 16)
    two = figures["cores"]["8000 scenes|build-binary|2"]
    assert two["compute_s"] >= two["cpu_hours"] * 3600 / 2 - 1e-6  # nothing beats perfect division
    pre = figures["gpus"]["8000 scenes|pre-training, 24 epochs|8"]
    assert pre["gpu_hours"] == pytest.approx(1032.0)  # 8000 scenes x 40 frames = the paper's 320k
    assert pre["wall_s"] == pytest.approx(1032 * 3600 / 8)


def test_round_robin_is_static():
    # worker 0 gets tasks 0 and 2 (1 + 4), worker 1 tasks 1 and 3 (1 + 1): 5, where a queue gives 4
    assert sim.round_robin([1, 1, 4, 1], 2) == 5
    assert sim.schedule([1, 1, 4, 1], 2, "longest").makespan == 4
    assert sim.round_robin([1, 1, 4, 1], 2, overhead=1.0) == 7
