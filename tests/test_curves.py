"""``b2s curves`` and b2s_core.viz.curves: learning curves read from run folders, checked on the pixels."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.train.logging import MetricsLog
from b2s_core.viz.curves import RAW_ALPHA, draw_curves, read_run, read_runs, smooth, write_curves
from b2s_core.viz.voxels import VisualizeError

WIDE = {"COLUMNS": "200"}  # one-line messages stay on one line in the runner's output


def make_run(folder: Path, *, steps=range(10, 210, 10), loss=None, lr=None, val_steps=(50, 100, 150, 200),
             miou=None, binary_iou=None) -> Path:
    """A run folder written by the trainer's own logger (metrics.jsonl, train.csv, val.csv)."""
    log = MetricsLog(folder)
    log.log("info", {"step": 0, "plan": "test"})
    for n, step in enumerate(steps):
        record = {"step": step, "epoch": n}
        if loss is not None:
            record["loss"] = float(loss[n])
        if lr is not None:
            record["lr"] = float(lr[n])
        log.log("train", record)
    for n, step in enumerate(val_steps if (miou is not None or binary_iou is not None) else ()):
        record = {"epoch": n}
        if binary_iou is not None:
            record["binary_iou"] = float(binary_iou[n])
        if miou is not None:
            record["miou"] = float(miou[n])
        record["step"] = step
        log.log("val", record)
    log.close()
    return folder


def near(image: np.ndarray, color, tol: int) -> np.ndarray:
    """(H, W) bool: pixels within ``tol`` of ``color`` in every channel."""
    return (np.abs(image.astype(int) - np.asarray(color)).max(axis=-1) <= tol)


def inside(picture, key: str) -> np.ndarray:
    row0, row1, col0, col1 = picture.plot_boxes[key]
    return picture.image[row0:row1, col0:col1]


def falling(n=20, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.linspace(3.0, 1.0, n) + noise * rng.standard_normal(n)


def test_rising_miou_is_drawn_higher_at_the_right_and_falling_loss_lower(tmp_path):
    run = read_run(make_run(tmp_path / "fine", loss=falling(), lr=np.full(20, 1e-3),
                            miou=[5.0, 15.0, 25.0, 40.0], binary_iou=[50.0, 50.0, 50.0, 50.0]))
    picture = draw_curves([run])
    color = picture.colors["fine"]
    for key, rises in (("miou", True), ("loss", False)):
        rows, cols = np.nonzero(near(inside(picture, key), color, 10))
        assert len(rows) > 100, key  # the line itself, not a stray pixel
        left = rows[cols <= cols.min() + 3].mean()
        right = rows[cols >= cols.max() - 3].mean()
        height = picture.plot_boxes[key][1] - picture.plot_boxes[key][0]
        # image rows grow downwards: higher on the picture = smaller row; by most of the panel's height
        assert (left - right if rises else right - left) > 0.5 * height, key
    # a flat binary IoU: one row from left to right
    rows, cols = np.nonzero(near(inside(picture, "binary_iou"), color, 10))
    assert len(rows) > 100 and abs(rows[cols <= cols.min() + 3].mean() - rows[cols >= cols.max() - 3].mean()) < 3
    assert picture.empty == []


def test_two_runs_get_two_distinct_colours_in_every_panel_and_the_legend(tmp_path):
    a = make_run(tmp_path / "pretrain", loss=falling(), lr=np.linspace(1e-3, 0, 20), binary_iou=[20, 30, 40, 50])
    b = make_run(tmp_path / "finetune", loss=falling() + 1, lr=np.linspace(1e-3, 0, 20), miou=[1, 2, 3, 4],
                 binary_iou=[40, 45, 50, 55])
    picture = draw_curves(read_runs([a, b]))
    ca, cb = picture.colors["pretrain"], picture.colors["finetune"]
    assert np.abs(np.subtract(ca, cb)).sum() > 150  # far apart, not two shades of one colour
    for key, owners in (("loss", "ab"), ("lr", "ab"), ("binary_iou", "ab"), ("miou", "b")):
        panel = inside(picture, key)
        assert (near(panel, ca, 10).sum() > 50) == ("a" in owners), key
        assert (near(panel, cb, 10).sum() > 50) == ("b" in owners), key
    # the legend sits above the panels: both colours appear there, outside every plot area
    top = min(box[0] for box in picture.plot_boxes.values())
    assert near(picture.image[:top], ca, 10).sum() > 20 and near(picture.image[:top], cb, 10).sum() > 20


def test_raw_loss_is_drawn_faint_behind_its_smoothed_line(tmp_path):
    run = read_run(make_run(tmp_path / "noisy", loss=falling(noise=0.4, seed=1), lr=np.full(20, 1e-3)))
    picture = draw_curves([run], smoothing=0.8)
    color = np.asarray(picture.colors["noisy"])
    faint = np.round(RAW_ALPHA * color + (1 - RAW_ALPHA) * 255)  # the run colour at RAW_ALPHA over white
    panel = inside(picture, "loss")
    assert near(panel, faint, 6).sum() > 40  # the raw values
    assert near(panel, color, 10).sum() > 100  # the average
    # without smoothing the two lines coincide: the faint one is hidden under the average
    plain = inside(draw_curves([run], smoothing=0.0), "loss")
    assert near(plain, faint, 6).sum() < 0.5 * near(panel, faint, 6).sum()


def test_panels_without_data_say_so_and_hold_no_line(tmp_path):
    # binary pre-training without --val-data: train records only
    run = read_run(make_run(tmp_path / "pretrain", loss=falling(), lr=np.full(20, 1e-3)))
    picture = draw_curves([run])
    assert picture.empty == ["binary_iou", "miou"]
    color = picture.colors["pretrain"]
    for key in ("binary_iou", "miou"):
        panel = inside(picture, key)
        assert near(panel, color, 40).sum() == 0
        text = panel.min(axis=-1) < 180  # the grey message in the middle of an otherwise white panel
        h, w = text.shape
        assert text[h // 3 : 2 * h // 3, w // 6 : 5 * w // 6].sum() > 200 and text.sum() == text[h // 3 : 2 * h // 3].sum()
    assert near(inside(picture, "loss"), color, 10).sum() > 100


def test_smoothing_is_a_debiased_moving_average():
    values = np.array([0.0, 1.0, 1.0, 4.0])
    np.testing.assert_allclose(smooth(values, 0.0), values)
    np.testing.assert_allclose(smooth(np.full(5, 7.0), 0.9), np.full(5, 7.0))  # no pull towards 0
    expected, running = [], 0.0
    for t, v in enumerate(values, start=1):
        running = 0.5 * running + 0.5 * v
        expected.append(running / (1 - 0.5**t))
    np.testing.assert_allclose(smooth(values, 0.5), expected)
    assert smooth(values, 0.5)[1] == pytest.approx(2 / 3)


def test_reading_keeps_the_last_record_of_a_step_and_tolerates_a_record_being_written(tmp_path):
    folder = make_run(tmp_path / "resumed", steps=[10, 20, 30], loss=[3.0, 2.0, 1.0], lr=[1, 1, 1])
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 20, "loss": 5.0}) + "\n")  # logged again after a resume
        f.write('{"kind": "train", "step": 40, "lo')  # a running job's record, half written
    run = read_run(folder)
    steps, values = run.series("train", "loss")
    assert steps.tolist() == [10, 20, 30] and values.tolist() == [3.0, 5.0, 1.0]
    assert run.name == "resumed" and run.path == folder / "metrics.jsonl"
    assert read_run(folder / "metrics.jsonl").name == "resumed"  # the file itself works too


def test_bad_run_folders_end_in_one_line_naming_them(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisualizeError, match=r"empty: no metrics\.jsonl"):
        read_run(tmp_path / "empty")
    with pytest.raises(VisualizeError, match="missing: no such run folder"):
        read_run(tmp_path / "missing")
    broken = make_run(tmp_path / "broken", steps=[10], loss=[1.0], lr=[1.0])
    text = (broken / "metrics.jsonl").read_text()
    (broken / "metrics.jsonl").write_text("not json\n" + text)
    with pytest.raises(VisualizeError, match=r"broken/metrics\.jsonl: line 1 is not a JSON record"):
        read_run(broken)
    (broken / "metrics.jsonl").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(VisualizeError, match=r"broken/metrics\.jsonl: not a text file"):
        read_run(broken)
    (broken / "metrics.jsonl").write_text(json.dumps({"kind": "val", "miou": 3.0}) + "\n")
    with pytest.raises(VisualizeError, match="line 1: a 'val' record without a whole-number 'step'"):
        read_run(broken)


def test_runs_in_folders_of_one_name_are_told_apart(tmp_path):
    a = make_run(tmp_path / "x" / "finetune", loss=falling(), lr=np.full(20, 1e-3))
    b = make_run(tmp_path / "y" / "finetune", loss=falling(), lr=np.full(20, 1e-3))
    c = make_run(tmp_path / "pretrain", loss=falling(), lr=np.full(20, 1e-3))
    assert [run.name for run in read_runs([a, b, c])] == ["x/finetune", "y/finetune", "pretrain"]


def test_write_curves_replaces_the_file_atomically(tmp_path):
    run = read_run(make_run(tmp_path / "r", loss=falling(), lr=np.full(20, 1e-3)))
    out = tmp_path / "pictures" / "curves.png"
    picture = write_curves([run], out, title="a title")
    with Image.open(out) as png:
        assert png.format == "PNG" and np.array_equal(np.asarray(png.convert("RGB")), picture.image)
    assert sorted(os.listdir(out.parent)) == ["curves.png"]  # no temporary file left


# -- the command ---------------------------------------------------------------------------------------
def test_command_draws_overlaid_runs_and_refuses_to_overwrite(tmp_path):
    a = make_run(tmp_path / "pretrain", loss=falling(), lr=np.full(20, 1e-3), binary_iou=[20, 30, 40, 50])
    b = make_run(tmp_path / "finetune", loss=falling(), lr=np.full(20, 1e-3), miou=[1, 2, 3, 4])
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(app, ["curves", str(a), str(b), "--out", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    first = out.read_bytes()
    with Image.open(out) as png:
        image = np.asarray(png.convert("RGB"))
    assert image.shape[0] > 500 and image.shape[1] > 800

    again = CliRunner().invoke(app, ["curves", str(a), "--out", str(out)], env=WIDE)
    assert again.exit_code == 1 and "output exists; pass --overwrite" in again.output
    assert out.read_bytes() == first and "Traceback" not in again.output
    replaced = CliRunner().invoke(app, ["curves", str(a), "--out", str(out), "--overwrite"], env=WIDE)
    assert replaced.exit_code == 0 and out.read_bytes() != first
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".curves.png.tmp-*"))


@pytest.mark.parametrize("args, message", [
    (["{d}/nothing"], "nothing: no metrics.jsonl in this folder"),
    (["{d}/pretrain", "--smoothing", "1"], "--smoothing must be at most 0.99"),
])
def test_command_refuses_bad_input_in_one_line(tmp_path, args, message):
    make_run(tmp_path / "pretrain", loss=falling(), lr=np.full(20, 1e-3))
    (tmp_path / "nothing").mkdir()
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(app, ["curves", *[a.format(d=tmp_path) for a in args], "--out", str(out)], env=WIDE)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_command_wants_a_png_path_not_a_folder_or_another_format(tmp_path):
    run = make_run(tmp_path / "r", loss=falling(), lr=np.full(20, 1e-3))
    jpg = CliRunner().invoke(app, ["curves", str(run), "--out", str(tmp_path / "c.jpg")], env=WIDE)
    assert jpg.exit_code == 1 and "ending in .png" in jpg.output
    folder = CliRunner().invoke(app, ["curves", str(run), "--out", str(run)], env=WIDE)
    assert folder.exit_code == 1 and "ending in .png" in folder.output
    assert (run / "metrics.jsonl").is_file()
