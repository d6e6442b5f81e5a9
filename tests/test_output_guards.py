"""Outputs never destroy inputs or existing files (b2s_core/output_paths.py), through the real CLI.

Each hostile case runs ``b2s`` on a folder of small real files and must end with exit code 1, one
line naming the path, no traceback, and every file that was there before byte-for-byte unchanged.
Commands whose work would need a dataset (convert, build-binary) or a training run (pretrain,
finetune) get a stand-in library call that writes its output, so a missing guard shows as a
changed file rather than as some later error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from _eval_data import make_frames, write_file
from test_evaluate_checkpoint import GRID16, save_tiny_checkpoint
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.output_paths import Output, OutputInUseError, acquire_lock, release_lock
from b2s_core.train.logging import MetricsLog


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """gt.h5 (one scene 'a', 2 frames), pred.h5 (its twin as predictions), an online and an offboard tiny checkpoint."""
    root = tmp_path_factory.mktemp("guards")
    rng = np.random.default_rng(3)
    write_file(root / "gt.h5", {"a": make_frames(rng, "a", 2, grid=GRID16)}, grid=GRID16)
    shutil.copy(root / "gt.h5", root / "pred.h5")
    save_tiny_checkpoint(root / "ck.pt", offboard=False)
    save_tiny_checkpoint(root / "off.pt", offboard=True)
    return root


@pytest.fixture
def work(tmp_path, originals, monkeypatch) -> Path:
    """A fresh copy of the originals; the library calls that need real datasets or training are stood in for."""
    for path in originals.iterdir():
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "dataroot").mkdir()
    (tmp_path / "dataroot" / "v1.0-mini.json").write_text("{}")

    def fake_run(config, progress=None):  # stands in for convert / build-binary: writes --out
        Path(config.out).write_bytes(b"converted")
        raise SystemExit(0)

    def fake_launch(config, gpus=1, **kwargs):  # stands in for training: writes the run's checkpoint
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "checkpoint.pt").write_bytes(b"new run")
        return Path(config.out) / "checkpoint.pt"

    monkeypatch.setattr("b2s_cli.commands.convert.run_convert", fake_run)
    monkeypatch.setattr("b2s_cli.commands.build_binary.run_build", fake_run)
    # pretrain / finetune import launch when they run (torch stays out of `b2s --help`): patch its home
    monkeypatch.setattr("b2s_core.train.launch.launch", fake_launch)
    return tmp_path


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(root: Path, args: list[str]):
    """Invoke ``b2s`` with ``{name}`` in args standing for ``root/name``."""
    return CliRunner().invoke(app, [a.format(**{p.name.replace(".", "_"): str(p) for p in root.iterdir()}, root=root)
                                    for a in args])


EARLIER = b"epochs: 1\n"  # what a made file holds: any bytes, but a valid settings file for --config


def make(root: Path, *names: str, content: bytes = EARLIER) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


EVAL = ["evaluate", "--checkpoint", "{ck_pt}", "--data", "{gt_h5}", "--ray-step", "30"]
LABEL = ["autolabel", "--checkpoint", "{off_pt}", "--data", "{gt_h5}", "--top1"]
SHOW = ["visualize", "a", "--data", "{gt_h5}", "--no-3d", "--no-cameras"]
CONVERT = ["convert", "--source", "nuscenes", "--dataroot", "{root}/dataroot"]
BUILD = ["build-binary", "--source", "nuscenes", "--dataroot", "{root}/dataroot"]

# (id, files made first, args, what the one-line error says, the path it names)
HOSTILE = [
    ("evaluate-predictions-out-is-data", (), EVAL + ["--out", "{root}/s.json", "--predictions-out", "{gt_h5}"],
     "--predictions-out is the same file as --data", "gt.h5"),
    ("evaluate-out-is-data", (), ["evaluate", "--predictions", "{pred_h5}", "--data", "{gt_h5}", "--out", "{gt_h5}"],
     "--out is the same file as --data", "gt.h5"),
    ("evaluate-out-is-predictions", (), ["evaluate", "--predictions", "{pred_h5}", "--data", "{gt_h5}", "--out", "{pred_h5}"],
     "--out is the same file as --predictions", "pred.h5"),
    ("evaluate-predictions-out-is-checkpoint", (), EVAL + ["--out", "{root}/s.json", "--predictions-out", "{ck_pt}"],
     "same file as --checkpoint", "ck.pt"),
    ("evaluate-out-exists", ("s.json",), EVAL + ["--out", "{root}/s.json"], "output exists; pass --overwrite", "s.json"),
    ("evaluate-default-predictions-exist", ("s.predictions.h5",), EVAL + ["--out", "{root}/s.json"],
     "output exists", "s.predictions.h5"),
    ("evaluate-two-outputs-one-file", (), EVAL + ["--out", "{root}/s.json", "--predictions-out", "{root}/s.json"],
     "--out and --predictions-out are the same path", "s.json"),
    ("autolabel-out-is-data", (), LABEL + ["--out", "{gt_h5}"], "--out is the same file as --data", "gt.h5"),
    ("autolabel-out-is-checkpoint", (), LABEL + ["--out", "{off_pt}"], "same file as --checkpoint", "off.pt"),
    ("autolabel-out-exists", ("labels.h5",), LABEL + ["--out", "{root}/labels.h5"], "output exists; pass --overwrite", "labels.h5"),
    ("autolabel-data-in-parts", ("labels.h5.parts/d.h5",), ["autolabel", "--checkpoint", "{off_pt}", "--data",
     "{root}/labels.h5.parts/d.h5", "--top1", "--out", "{root}/labels.h5"], "lies inside", "labels.h5.parts"),
    ("visualize-out-is-a-file", ("pics",), SHOW + ["--out", "{root}/pics"], "is a file; --out must be a folder", "pics"),
    ("visualize-out-is-data", (), SHOW + ["--out", "{gt_h5}"], "is a file", "gt.h5"),
    ("visualize-scene-pictures-exist", ("pics/a_bev.gif",), SHOW + ["--out", "{root}/pics"],
     "already holds a_bev.gif; pass --overwrite", "pics"),
    ("synth-out-is-a-file", ("world",), ["synth", "--out", "{root}/world"], "is a file", "world"),
    ("synth-out-not-empty", ("world/x.txt",), ["synth", "--out", "{root}/world"], "folder is not empty", "world"),
    ("convert-out-exists", ("c.h5",), CONVERT + ["--out", "{root}/c.h5"], "output exists", "c.h5"),
    ("convert-out-is-dataroot", (), CONVERT + ["--out", "{root}/dataroot", "--overwrite"], "is a folder", "dataroot"),
    ("convert-out-is-labels", ("occ.npz",), CONVERT + ["--labels", "occ3d:{root}/occ.npz", "--out", "{root}/occ.npz",
     "--overwrite"], "--out is the same file as --labels", "occ.npz"),
    ("build-binary-out-exists", ("b.h5",), BUILD + ["--out", "{root}/b.h5"], "output exists", "b.h5"),
    ("build-binary-out-in-dataroot-table", (), BUILD + ["--out", "{root}/dataroot/v1.0-mini.json"], "output exists",
     "v1.0-mini.json"),
    ("pretrain-out-holds-a-run", ("run/checkpoint.pt", "run/metrics.jsonl"), ["pretrain", "--data", "{gt_h5}", "--out",
     "{root}/run"], "already holds checkpoint.pt, metrics.jsonl; continue it with --resume", "run"),
    ("finetune-out-holds-the-init", ("pre/checkpoint.pt",), ["finetune", "--init", "{root}/pre/checkpoint.pt",
     "--semantic-data", "{gt_h5}", "--out", "{root}/pre", "--overwrite"], "would overwrite --init", "checkpoint.pt"),
    ("pretrain-config-in-out", ("run/config.yaml",), ["pretrain", "--config", "{root}/run/config.yaml", "--data",
     "{gt_h5}", "--out", "{root}/run", "--overwrite"], "would overwrite --config", "config.yaml"),
    ("pretrain-resume-and-overwrite", ("run/checkpoint.pt",), ["pretrain", "--data", "{gt_h5}", "--out", "{root}/run",
     "--resume", "--overwrite"], "give one of them", "--resume"),
]


@pytest.mark.parametrize("made, args, problem, named", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_output_is_refused_and_nothing_changes(work, made, args, problem, named):
    make(work, *made)
    before = hashes(work)
    result = run(work, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert problem in lines[0] and named in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert hashes(work) == before
    assert not list(work.rglob("*.lock"))  # the refused run left no lock behind


def test_overwrite_replaces_evaluate_outputs(work):
    make(work, "s.json", "p.h5")
    result = run(work, EVAL + ["--out", "{root}/s.json", "--predictions-out", "{root}/p.h5", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (work / "s.json").read_bytes() != EARLIER and (work / "p.h5").read_bytes() != EARLIER
    assert not list(work.rglob("*.lock"))


def test_overwrite_replaces_autolabel_output(work):
    make(work, "labels.h5")
    result = run(work, LABEL + ["--out", "{root}/labels.h5", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (work / "labels.h5").read_bytes() != EARLIER


def test_autolabel_resumes_from_parts_without_overwrite(work):
    (work / "labels.h5.parts").mkdir()  # an interrupted run's parts are not an existing output
    result = run(work, LABEL + ["--out", "{root}/labels.h5"])
    assert result.exit_code == 0, result.output
    assert (work / "labels.h5").is_file() and not (work / "labels.h5.parts").exists()


def test_visualize_keeps_other_scenes_and_overwrites_its_own(work):
    make(work, "pics/b_bev.gif")  # another scene's picture: neither in the way nor replaced
    assert run(work, SHOW + ["--out", "{root}/pics"]).exit_code == 0
    assert (work / "pics" / "b_bev.gif").read_bytes() == EARLIER and (work / "pics" / "a_bev.gif").is_file()
    assert run(work, SHOW + ["--out", "{root}/pics"]).exit_code == 1
    assert run(work, SHOW + ["--out", "{root}/pics", "--overwrite"]).exit_code == 0


def test_training_resume_and_overwrite(work):
    make(work, "run/checkpoint.pt", "run/metrics.jsonl", "run/train.csv")
    resumed = run(work, ["pretrain", "--data", "{gt_h5}", "--out", "{root}/run", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (work / "run" / "metrics.jsonl").is_file()  # a resumed run continues its logs
    started_over = run(work, ["pretrain", "--data", "{gt_h5}", "--out", "{root}/run", "--overwrite"])
    assert started_over.exit_code == 0, started_over.output
    assert not (work / "run" / "metrics.jsonl").exists() and not (work / "run" / "train.csv").exists()


def training_run(folder: Path) -> Path:
    """A run folder as the trainer's own logger writes it (metrics.jsonl, train.csv), for ``b2s curves``."""
    with warnings.catch_warnings():  # "no TensorBoard logs" where the optional extra is missing: not what is tested
        warnings.simplefilter("ignore")
        log = MetricsLog(folder)
    for step, loss in ((10, 2.0), (20, 1.5), (30, 1.2)):
        log.log("train", {"step": step, "loss": loss, "lr": 1e-3})
    log.close()
    return folder


def refused_in_one_line(result, problem: str, named: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    assert problem in lines[0] and named in lines[0], lines[0]


def test_curves_replaces_an_existing_png_only_with_overwrite(work):
    training_run(work / "run")
    make(work, "c.png")
    before = hashes(work)
    refused_in_one_line(run(work, ["curves", "{root}/run", "--out", "{root}/c.png"]), "output exists; pass --overwrite", "c.png")
    assert hashes(work) == before and not list(work.rglob("*.lock"))
    replaced = run(work, ["curves", "{root}/run", "--out", "{root}/c.png", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (work / "c.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert {k: v for k, v in hashes(work).items() if k != "c.png"} == {k: v for k, v in before.items() if k != "c.png"}
    assert not list(work.rglob("*.lock")) and not list(work.glob(".c.png.tmp-*"))


# --out naming the run's own metrics.jsonl: as it is, through a hard link, through a symbolic link
@pytest.mark.parametrize("link, problem", [(None, "give a path ending in .png"), (os.link, "--out is the same file as"),
                                           (os.symlink, "--out is the same file as")], ids=["itself", "hard-link", "symlink"])
def test_curves_never_writes_over_a_run_file(work, link, problem):
    metrics = training_run(work / "run") / "metrics.jsonl"
    out = metrics
    if link is not None:
        out = work / "curves.png"
        link(metrics, out)
    before = hashes(work)
    # --overwrite does not lift it: the metrics are an input of the command
    refused_in_one_line(run(work, ["curves", "{root}/run", "--out", str(out), "--overwrite"]), problem, "metrics.jsonl")
    assert hashes(work) == before and not list(work.rglob("*.lock"))


def live_process():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_lock_held_by_a_live_run_refuses(work):
    other = live_process()
    try:
        lock = work / "s.json.lock"
        lock.write_text(f"{other.pid} {socket.gethostname()}\n")
        before = hashes(work)
        result = run(work, EVAL + ["--out", "{root}/s.json"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"s.json: in use by pid {other.pid} (another b2s run)" in result.output
        assert f"delete {lock}" in result.output.replace("\n", "")
        assert hashes(work) == before and not (work / "s.json").exists()
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over(work):
    gone = live_process()
    gone.kill()
    gone.wait()  # reaped: its pid names no process any more
    (work / "s.json.lock").write_text(f"{gone.pid} {socket.gethostname()}\n")
    result = run(work, EVAL + ["--out", "{root}/s.json"])
    assert result.exit_code == 0, result.output
    assert (work / "s.json").is_file() and not (work / "s.json.lock").exists()


def test_lock_is_exclusive_and_released(tmp_path):
    output = Output(tmp_path / "x.h5")
    lock = acquire_lock(output)
    assert lock.read_text().split()[0] == str(os.getpid())
    other = live_process()
    try:
        lock.write_text(f"{other.pid} {socket.gethostname()}\n")  # as if another run held it
        with pytest.raises(OutputInUseError, match=f"in use by pid {other.pid}"):
            acquire_lock(output)
        release_lock(lock)  # not ours: left alone
        assert lock.exists()
    finally:
        other.kill()
        other.wait()
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    release_lock(lock)
    assert not lock.exists()
