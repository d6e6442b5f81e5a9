"""examples/reproduce_paper.py end to end at the smoke scale: every table and plot, sane values, resumable.

Checks the pipeline (world -> the cells of claims C1..C5 -> report), not the numbers: the smoke runs take one step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "reproduce_paper.py"
sys.path.insert(0, str(REPO / "examples"))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    work, docs = root / "work", root / "docs"
    first = _run("--scale", "smoke", "--work", str(work), "--docs", str(docs))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, docs, first.stdout


def test_every_table_and_plot_is_written(smoke):
    work, docs, stdout = smoke
    text = (docs / "results.md").read_text()
    assert "Scale that produced these numbers: `smoke`" in text
    for heading in ("## Claims at a glance", "## Learning curves", "## C1", "## C2", "## C3", "## C4", "## C5",
                    "## The world", "## Per-class IoU"):
        assert heading in text, heading
    # The paper's numbers sit beside ours, and every claim got a verdict.
    assert "19.20" in text and "18.35" in text and "33.17" in text and "54.8" in text
    claim_rows = [line for line in text.splitlines() if re.match(r"\| C\d \|", line)]
    assert {row.split("|")[1].strip() for row in claim_rows} == {"C1", "C2", "C3", "C4", "C5"}
    assert len(claim_rows) >= 18
    assert all("**" in line for line in claim_rows)
    assert "n/a" not in "\n".join(claim_rows)  # every compared cell ran
    assert "did not finish" not in text
    # Each verdict was logged once, when the last of its cells finished, and the report lists them in that order.
    came = [json.loads(line) for line in (work / "verdicts.jsonl").read_text().splitlines()]
    assert len(came) == len(claim_rows) and len({(v["claim"], v["test"]) for v in came}) == len(came)
    assert "The order in which the verdicts came" in text
    assert sum(line.split()[1:2] == ["verdict"] for line in stdout.splitlines()) == len(came)  # logged as they came
    # C4 in both pseudo-label forms, Top1 and Top2 each.
    for form in ("paper", "given"):
        for mode in ("Top1", "Top2"):
            assert f"K GT + P {mode} ({form} form) beats K GT" in text
    from PIL import Image

    for name in ("results_curves.png", "results_c1_pretraining.png", "results_c2_strategies.png",
                 "results_c4_pseudo_labels.png"):
        with Image.open(docs / "images" / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_cell_results_are_sane(smoke):
    work, _, _ = smoke
    results = {p.stem: json.loads(p.read_text()) for p in (work / "cells").glob("*.json")}
    # smoke: 1 seed, pre-training on 0 or 1 scene: 2 pre-trainings (Sparse-LS, LS), 6 C1/C2 fine-tunings
    # (S+B at 0 is S+B*), 1 offboard model, 4 labellings and 4 trainings on them, LS on K and on K+P GT
    assert len(results) == 18
    for cell_id, r in results.items():
        if cell_id.startswith("pretrain"):
            assert r["train"]["steps"] == 1
            assert r["curve"] and r["curve"][-1]["binary_iou"] is not None  # validated during pre-training
            continue
        if cell_id.startswith("label-"):
            assert 0.0 <= r["vs_truth"]["miou"] <= 100.0 and Path(r["labels"]).is_file()
            continue
        val = r["val"]
        assert 0.0 <= val["miou"] <= 100.0 and 0.0 <= val["geometry_iou"] <= 100.0, cell_id
        assert val["frames"] == 2  # the validation scene's 2 key frames
        assert r["train_fit"]["frames"] == 2  # the labelled scene's 2 key frames
        assert [c["step"] for c in r["curve"]] == [1], cell_id  # the learning curve: one step, validated
        sparse_online = cell_id.startswith("ft-sparse-ls")
        assert ("val_gt_binary" in r) == sparse_online, cell_id
        assert ("val_gt_segment" in r) == (sparse_online or cell_id.startswith("offboard")), cell_id
    # Kept to the GT-occupied voxels, an output's geometry is the labels' own (C3 / C5 segmentation scores).
    assert results["offboard-s0"]["val_gt_segment"]["geometry_iou"] == pytest.approx(100.0)
    assert results["ft-sparse-ls-b-n1-s0"]["val_gt_segment"]["geometry_iou"] == pytest.approx(100.0)
    # The two pseudo-label forms differ: 'given' keeps the build-binary geometry, 'paper' the model's own.
    from b2s_core.occfile import OccDataset

    occupied = {}
    for name, path in (("paper", results["label-top1-paper-s0"]["labels"]),
                       ("given", results["label-top1-given-s0"]["labels"]),
                       ("binary", str(work / "world" / "data" / "binary_0.h5"))):
        data = OccDataset(path)
        occupied[name] = data.read(0, fields=("occupancy",)).occupancy
        data.close()
    assert (occupied["given"] == occupied["binary"]).all()
    assert not (occupied["paper"] == occupied["given"]).all()
    # Finished runs keep their weights only (the optimiser state would triple the work folder).
    from b2s_core.models.checkpoint import read_checkpoint

    for run in ("pretrain-sparse-ls-n1-s0", "ft-sparse-ls-b-n1-s0"):
        state = read_checkpoint(work / "runs" / run / "checkpoint.pt")
        assert state["optimizer"] is None and state["progress"]["finished"] and state["model"]
    # The offboard model has no binary decoder to score.
    assert results["offboard-s0"]["val"]["binary_iou"] is None
    assert results["ft-sparse-ls-b-n1-s0"]["val"]["binary_iou"] is not None


def test_a_second_run_reuses_every_cell(smoke):
    work, docs, _ = smoke
    again = _run("--scale", "smoke", "--work", str(work), "--docs", str(docs))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "18 cached, 0 to run" in again.stdout


def test_a_work_folder_of_another_scale_is_refused(smoke):
    work, docs, _ = smoke
    result = _run("--scale", "default", "--work", str(work), "--docs", str(docs))
    assert result.returncode == 1
    assert "world.json" in result.stderr and "other parameters" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_pilot_runs_apart_from_the_claims(smoke):
    work, docs, _ = smoke
    before = sorted(p.name for p in (work / "cells").iterdir())
    pilot = _run("--scale", "smoke", "--pilot", "--work", str(work), "--docs", str(docs))
    assert pilot.returncode == 0, pilot.stdout[-2000:] + pilot.stderr[-2000:]
    assert "4 in all, 0 cached" in pilot.stdout  # its own folder: no claim cell is reused
    assert sorted(p.name for p in (work / "cells").iterdir()) == before
    assert sorted(p.stem for p in (work / "pilot" / "cells").glob("*.json")) == [
        "ft-ls-replace-n0-s100", "ft-sparse-ls-b-n1-s100", "kp-gt-s100", "pretrain-sparse-ls-n1-s100"]
    assert "flat from step" in pilot.stdout
    assert (docs / "images" / "reproduce_pilot.png").is_file()


def test_plateau_step():
    from reproduce.report import plateau_step

    curve = [{"step": s, "miou": v} for s, v in ((40, 5.0), (80, 9.0), (120, 10.5), (160, 10.0), (200, 11.0))]
    assert plateau_step(curve) == 120  # from 120 on, every point is within 1 of the best (11.0)
    assert plateau_step(curve, tolerance=0.1) == 200
    assert plateau_step([{"step": 1, "miou": None}]) is None


def test_verdict_rule():
    from reproduce.report import Stat, verdict

    assert verdict(Stat([3.0, 3.1, 2.9]), Stat([1.0, 1.1, 0.9]))[0] == "holds"
    assert verdict(Stat([1.0, 1.1, 0.9]), Stat([3.0, 3.1, 2.9]))[0] == "does not hold"
    assert verdict(Stat([1.0, 3.0, 2.0]), Stat([1.5, 2.5, 1.0]))[0] == "within noise"
    assert verdict(Stat([5.0]), Stat([1.0]))[0] == "undetermined (1 seed)"
    assert verdict(Stat([]), Stat([1.0, 2.0]))[0] == "not run"
    assert str(Stat([1.0, 2.0, 3.0])) == "2.00 ± 1.00"


def test_cached_cells_of_other_training_settings_are_refused(tmp_path):
    from dataclasses import replace

    from reproduce.runner import check_settings
    from reproduce.scales import SCALES
    from reproduce.world import WorldError

    smoke = SCALES["smoke"]
    check_settings(tmp_path, smoke)  # a new folder records the settings
    check_settings(tmp_path, replace(smoke, seeds=(0, 1)))  # the seeds are part of the cell ids
    with pytest.raises(WorldError, match="class_balance, finetune_steps"):
        check_settings(tmp_path, replace(smoke, finetune_steps=5, class_balance=0.0))
    older = tmp_path / "older"  # cells cached before settings were recorded
    (older / "cells").mkdir(parents=True)
    (older / "cells" / "offboard-s0.json").write_text("{}")
    with pytest.raises(WorldError, match="without a record"):
        check_settings(older, smoke)
