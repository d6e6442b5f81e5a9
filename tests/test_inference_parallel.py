"""``b2s autolabel`` / ``b2s evaluate --checkpoint`` with ``--gpus 2``: two Gloo processes on the CPU
(torchrun) write the same files and print the same scores as one process."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from _eval_data import make_frames, write_file
from test_evaluate_checkpoint import GRID16, save_tiny_checkpoint
from typer.testing import CliRunner

from b2s_core.apps import worker
from b2s_core.apps.launch import JOB_KINDS, WORKER_MODULE, InferenceLaunchError, launch, torchrun_command
from b2s_core.occfile import FIELDS, OccDataset
from b2s_core.shards import balanced_shares


def test_balanced_shares():
    # longest first onto the lightest share: 5 | 3 + 1 + 1
    assert balanced_shares([5, 1, 1, 3], 2) == [[0], [1, 2, 3]]
    assert balanced_shares([1, 2, 1], 2) == [[1], [0, 2]]
    assert balanced_shares([4, 4, 4, 4], 2) == [[0, 2], [1, 3]]
    assert balanced_shares([3], 3) == [[0], [], []]  # more ranks than scenes: some idle
    shares = balanced_shares([7, 2, 9, 4, 4, 1, 8, 3], 3)
    assert sorted(i for share in shares for i in share) == list(range(8))  # every scene exactly once
    assert [sum([7, 2, 9, 4, 4, 1, 8, 3][i] for i in share) for share in shares] == [13, 12, 13]  # 38 frames: 13 is the best max


def test_the_launcher_starts_the_worker_of_every_job():
    # the launcher names the worker module without importing it (the worker imports the applications,
    # which import the launcher): the name, the jobs and the command must still meet
    assert importlib.import_module(WORKER_MODULE) is worker
    assert set(worker.JOBS) == set(JOB_KINDS)
    assert torchrun_command("job.json", 2)[-3:] == ["-m", WORKER_MODULE, "job.json"]
    with pytest.raises(InferenceLaunchError, match="unknown job 'predict'"):
        launch("predict", {}, gpus=2, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Scenes of 1, 2 and 1 frames: rank 0 takes the middle one, rank 1 the first and the last, so
    the merge must restore the data's order. Tiny offboard and online checkpoints."""
    root = tmp_path_factory.mktemp("parallel")
    rng = np.random.default_rng(11)
    scenes = {name: make_frames(rng, name, count, grid=GRID16) for name, count in (("a", 1), ("b", 2), ("c", 1))}
    assert balanced_shares([1, 2, 1], 2) == [[1], [0, 2]]
    data = write_file(root / "data.h5", scenes, grid=GRID16)
    return data, save_tiny_checkpoint(root / "offboard.pt", offboard=True), save_tiny_checkpoint(root / "online.pt", offboard=False)


def run(args):
    from b2s_cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def assert_same_frames(one_path, two_path):
    one, two = OccDataset(one_path), OccDataset(two_path)
    assert [s.name for s in two.scenes] == [s.name for s in one.scenes] == ["a", "b", "c"]
    assert two.tokens() == one.tokens() and len(one) == 4
    fields = [f for f in FIELDS if f not in ("points", "cameras")]
    for i in range(len(one)):
        assert two.flags(i) == one.flags(i)
        a, b = one.read(i, fields=fields), two.read(i, fields=fields)
        assert a.scene == b.scene and a.token == b.token
        np.testing.assert_array_equal(a.global_from_ego, b.global_from_ego)
        for name in ("occupancy", "semantics", "mask_camera", "mask_lidar", "binary_pred", "top2_labels", "top2_logits", "top2_support"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), f"frame {i}: {name} differs"
    return one, two


def test_autolabel_two_processes_equal_one(tmp_path, setup):
    data, offboard, _ = setup
    outputs = {}
    for gpus in (1, 2):
        outputs[gpus] = tmp_path / f"labels-{gpus}.h5"
        result = run(["autolabel", "--checkpoint", offboard, "--data", data, "--top2", "--out", outputs[gpus],
                      "--device", "cpu", "--gpus", gpus])
        assert "4 frames" in result.output
    one, _ = assert_same_frames(outputs[1], outputs[2])
    assert one.read(0, fields=("top2",)).top2_labels is not None  # the Top2 arrays were compared, not skipped
    assert not (tmp_path / "labels-2.h5.parts").exists()


def test_evaluate_two_processes_equal_one(tmp_path, setup):
    data, _, online = setup
    scores = {}
    for gpus in (1, 2):
        out = tmp_path / f"scores-{gpus}.json"
        result = run(["evaluate", "--checkpoint", online, "--data", data, "--out", out, "--ray-step", "30",
                      "--device", "cpu", "--gpus", gpus])
        assert "mIoU" in result.output
        scores[gpus] = json.loads(out.read_text())
    one, two = scores[1], scores[2]
    assert one["frames"] == two["frames"] == 4 and one["rays"] > 0 and one["binary_iou"] is not None
    assert one["confusion"] == two["confusion"] and one["rays"] == two["rays"]
    for key in ("miou", "geometry_iou", "binary_iou", "rayiou"):
        assert two[key] == pytest.approx(one[key], abs=1e-9)
    assert two["iou"] == pytest.approx(one["iou"], abs=1e-9, nan_ok=True)
    for t in ("1", "2", "4"):
        assert two["rayiou_at"][t] == pytest.approx(one["rayiou_at"][t], abs=1e-9)
        assert two["rayiou_per_class"][t] == pytest.approx(one["rayiou_per_class"][t], abs=1e-9, nan_ok=True)
    assert_same_frames(tmp_path / "scores-1.predictions.h5", tmp_path / "scores-2.predictions.h5")
    assert not (tmp_path / "scores-2.predictions.h5.parts").exists()


def test_worker_error_comes_back_as_one_line(tmp_path, setup):
    from b2s_cli.app import app

    data, _, online = setup
    result = CliRunner().invoke(app, ["autolabel", "--checkpoint", str(online), "--data", str(data), "--top1",
                                      "--out", str(tmp_path / "x.h5"), "--device", "cpu", "--gpus", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "autolabel needs an offboard model" in result.output and "(rank 0)" in result.output
    assert not (tmp_path / "x.h5").exists()


def test_gpus_refused_with_a_predictions_file(tmp_path, setup):
    from b2s_cli.app import app

    data = setup[0]
    result = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--predictions", str(data),
                                      "--out", str(tmp_path / "s.json"), "--gpus", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--gpus runs a checkpoint in parallel" in result.output and len(result.output.strip().splitlines()) == 1
