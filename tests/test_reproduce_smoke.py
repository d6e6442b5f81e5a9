"""examples/reproduce_paper.py end to end at the smoke scale: every table and plot, sane values, resumable.

Checks the pipeline (world -> E1..E4 -> report), not the numbers: the smoke runs take one step.
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
    work, docs, _ = smoke
    text = (docs / "results.md").read_text()
    assert "Scale that produced these numbers: `smoke`" in text
    for heading in ("## Claims at a glance", "## E1", "## E2", "## E3", "## E4", "## The world"):
        assert heading in text, heading
    # Table 1's paper numbers sit beside ours, and every claim got a verdict.
    assert "19.20" in text and "18.35" in text and "33.17" in text and "54.8" in text
    claim_rows = [line for line in text.splitlines() if re.match(r"\| E\d \|", line)]
    assert len(claim_rows) >= 12
    assert all("**" in line for line in claim_rows)
    assert "n/a" not in "\n".join(claim_rows)  # every compared cell ran
    assert "did not finish" not in text
    from PIL import Image

    for name in ("results_e1_pretraining.png", "results_e1_strategies.png", "results_e2_e3_e4.png"):
        with Image.open(docs / "images" / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_cell_results_are_sane(smoke):
    work, _, _ = smoke
    results = {p.stem: json.loads(p.read_text()) for p in (work / "cells").glob("*.json")}
    # smoke: 1 seed, pre-training on 0 or 1 scene: 2 pre-trainings, 7 E1 fine-tunings (S+B at 0 is S+B*),
    # 1 offboard model, 2 labellings, 3 E3 trainings
    assert len(results) == 15
    for cell_id, r in results.items():
        if cell_id.startswith("pretrain"):
            assert r["train"]["steps"] == 1
            continue
        if cell_id.startswith("e3-label"):
            assert 0.0 <= r["vs_truth"]["miou"] <= 100.0 and Path(r["labels"]).is_file()
            continue
        val = r["val"]
        assert 0.0 <= val["miou"] <= 100.0 and 0.0 <= val["geometry_iou"] <= 100.0, cell_id
        assert val["frames"] == 2  # the validation scene's 2 key frames
        assert ("val_gt_binary" in r) == (cell_id.startswith("e1-sparse-ls")), cell_id
        assert ("val_gt_segment" in r) == (cell_id.startswith(("e1-sparse-ls", "e2-offboard"))), cell_id
    # Kept to the GT-occupied voxels, an output's geometry is the labels' own (E2 / E4 segmentation scores).
    assert results["e2-offboard-s0"]["val_gt_segment"]["geometry_iou"] == pytest.approx(100.0)
    assert results["e1-sparse-ls-b-n1-s0"]["val_gt_segment"]["geometry_iou"] == pytest.approx(100.0)
    # Finished runs keep their weights only (the optimiser state would triple the work folder).
    from b2s_core.models.checkpoint import read_checkpoint

    for run in ("pretrain-sparse-ls-n1-s0", "e1-sparse-ls-b-n1-s0"):
        state = read_checkpoint(work / "runs" / run / "checkpoint.pt")
        assert state["optimizer"] is None and state["progress"]["finished"] and state["model"]
    # The offboard model has no binary decoder to score.
    assert results["e2-offboard-s0"]["val"]["binary_iou"] is None
    assert results["e1-sparse-ls-b-n1-s0"]["val"]["binary_iou"] is not None


def test_a_second_run_reuses_every_cell(smoke):
    work, docs, _ = smoke
    again = _run("--scale", "smoke", "--work", str(work), "--docs", str(docs))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "15 cached, 0 to run" in again.stdout


def test_a_work_folder_of_another_scale_is_refused(smoke):
    work, docs, _ = smoke
    result = _run("--scale", "default", "--work", str(work), "--docs", str(docs))
    assert result.returncode == 1
    assert "world.json" in result.stderr and "other parameters" in result.stderr
    assert "Traceback" not in result.stderr


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
    (older / "cells" / "e2-offboard-s0.json").write_text("{}")
    with pytest.raises(WorldError, match="without a record"):
        check_settings(older, smoke)
