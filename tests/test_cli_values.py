"""Bad option values, contradicting options and rich markup in paths, through the real CLI.

Every refused case must end with a non-zero exit code, exactly one line naming the option / key /
path, no traceback, and no output written. Most checks happen before any data is read, so the
data here are only what the few commands that get that far need (one tiny scene, as
tests/test_output_guards.py uses).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from _eval_data import make_frames, write_file
from rich.console import Console
from rich.progress import Progress
from test_evaluate_checkpoint import GRID16, save_tiny_checkpoint
from typer.testing import CliRunner

from b2s_cli.app import app

WIDE = {"COLUMNS": "400"}  # tables and progress lines unwrapped: a path stays on one line


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """gt.h5 (scene 'a', 2 frames on GRID16), pred.h5 (its twin), ck.pt / off.pt (tiny online / offboard models)."""
    root = tmp_path_factory.mktemp("values")
    write_file(root / "gt.h5", {"a": make_frames(np.random.default_rng(3), "a", 2, grid=GRID16)}, grid=GRID16)
    shutil.copy(root / "gt.h5", root / "pred.h5")
    save_tiny_checkpoint(root / "ck.pt", offboard=False)
    save_tiny_checkpoint(root / "off.pt", offboard=True)
    (root / "dataroot").mkdir()
    return root


@pytest.fixture
def no_training(monkeypatch):
    """A training run that got past the checks would be a bug here: fail loudly instead of training."""
    def refuse(config, gpus=1, **kwargs):
        raise AssertionError(f"training started with {config}")

    # pretrain / finetune import launch when they run (torch stays out of `b2s --help`): patch its home
    monkeypatch.setattr("b2s_core.train.launch.launch", refuse)


def _pretrain(*extra):
    return ["pretrain", "--data", "{d}/gt.h5", "--out", "{o}", *extra]


def _finetune(*extra):
    return ["finetune", "--semantic-data", "{d}/gt.h5", "--model", "sparse-ls", "--out", "{o}", *extra]


def _evaluate(*extra):
    return ["evaluate", "--data", "{d}/gt.h5", "--predictions", "{d}/pred.h5", "--out", "{o}", *extra]


def _autolabel(*extra):
    return ["autolabel", "--checkpoint", "{d}/off.pt", "--data", "{d}/gt.h5", "--top1", "--out", "{o}", *extra]


def _source(command, *extra):
    return [command, "--source", "nuscenes", "--dataroot", "{d}/dataroot", "--out", "{o}", *extra]


def _synth(*extra):
    return ["synth", "--out", "{o}", "--scenes", "1", "--frames", "1", "--no-preview", *extra]


# (id, command line ({d}: the data folder, {o}: the output that must not appear), text the one line must hold)
REFUSED = [
    # -- numeric option values --------------------------------------------------------------------
    ("evaluate-ray-step-0", _evaluate("--ray-step", "0"), "--ray-step must be greater than 0"),
    ("evaluate-ray-step-negative", _evaluate("--ray-step", "-5"), "--ray-step must be greater than 0"),
    ("evaluate-ray-step-nan", _evaluate("--ray-step", "nan"), "--ray-step must be a finite number"),
    ("evaluate-ray-step-over-360", _evaluate("--ray-step", "720"), "--ray-step must be at most 360"),
    ("evaluate-batch-size-0", _evaluate("--batch-size", "0"), "--batch-size must be at least 1"),
    ("evaluate-workers-negative", ["evaluate", "--data", "{d}/gt.h5", "--checkpoint", "{d}/ck.pt", "--out", "{o}",
                                   "--workers", "-1"], "--workers must be at least 0"),
    ("autolabel-workers-negative", _autolabel("--workers", "-1"), "--workers must be at least 0"),
    ("autolabel-batch-size-0", _autolabel("--batch-size", "0"), "--batch-size must be at least 1"),
    ("visualize-frame-negative", ["visualize", "a", "--data", "{d}/gt.h5", "--out", "{o}", "--frame", "-1"],
     "--frame must be at least 0"),
    ("synth-seed-negative", _synth("--seed", "-1"), "--seed must be at least 0"),
    ("synth-scenes-0", ["synth", "--out", "{o}", "--scenes", "0"], "--scenes must be at least 1"),
    ("synth-frames-0", ["synth", "--out", "{o}", "--frames", "0"], "--frames must be at least 1"),
    ("synth-grid-nan", _synth("--grid", "-40,-40,-1,40,40,nan:0.4"), "--grid: custom grid"),
    ("synth-grid-zero-voxel", _synth("--grid", "-40,-40,-1,40,40,5.4:0"), "voxel_size must be positive"),
    ("convert-grid-inf", _source("convert", "--grid", "0,0,0,1,1,inf:0.5"), "--grid: custom grid"),
    ("convert-workers-negative", _source("convert", "--workers", "-1"), "--workers must be at least 1"),
    ("build-binary-grid-nan", _source("build-binary", "--grid", "0,0,0,1,1,nan:0.5"), "--grid: custom grid"),
    ("build-binary-grid-negative-voxel", _source("build-binary", "--grid", "0,0,0,1,1,1:-0.5"), "must be positive"),
    ("build-binary-camera-stride-negative", _source("build-binary", "--camera-stride", "-3"),
     "--camera-stride must be greater than 0"),
    ("build-binary-camera-stride-0", _source("build-binary", "--camera-stride", "0"),
     "--camera-stride must be greater than 0"),
    ("build-binary-camera-stride-nan", _source("build-binary", "--camera-stride", "nan"),
     "--camera-stride must be a finite number"),
    ("build-binary-camera-stride-word", _source("build-binary", "--camera-stride", "wide"),
     "--camera-stride must be a number of pixels or 'auto'"),
    ("build-binary-workers-negative", _source("build-binary", "--workers", "-1"), "--workers must be at least 1"),
    ("build-binary-sweeps-negative", _source("build-binary", "--sweeps", "-2"), "--sweeps must be at least 0"),
    ("build-binary-ray-sweeps-0", _source("build-binary", "--ray-sweeps", "0"), "--ray-sweeps must be at least 1"),
    ("pretrain-gpus-0", _pretrain("--gpus", "0"), "--gpus must be at least 1"),
    ("pretrain-lr-nan", _pretrain("--lr", "nan"), "--lr must be a finite number"),
    ("pretrain-weight-decay-inf", _pretrain("--weight-decay", "inf"), "--weight-decay must be a finite number"),
    ("pretrain-binary-balance-negative", _pretrain("--binary-balance", "-1"), "--binary-balance must not be negative"),
    ("pretrain-seed-negative", _pretrain("--seed", "-1"), "--seed must not be negative"),
    ("pretrain-set-nan", _pretrain("--set", "grad_clip=.nan"), "--set grad_clip: must be a finite number"),
    ("pretrain-set-min-lr-ratio", _pretrain("--set", "min_lr_ratio=2"), "--set min_lr_ratio: must lie in 0..1"),
    ("pretrain-yaml-nan", _pretrain("--config", "{d}/nan.yaml"), "nan.yaml: lr must be a finite number"),
    ("finetune-class-balance-nan", _finetune("--class-balance", "nan"), "--class-balance must be a finite number"),
    ("finetune-gpus-negative", _finetune("--gpus", "-1"), "--gpus must be at least 1"),
    # -- options that would be silently ignored ---------------------------------------------------
    ("convert-split-and-scenes", _source("convert", "--split", "val", "--scenes", "scene-0001"),
     "--scenes and --split cannot be given together"),
    ("build-binary-split-and-scenes", _source("build-binary", "--split", "val", "--scenes", "scene-0001"),
     "--scenes and --split cannot be given together"),
    ("finetune-offboard-strategy", _finetune("--offboard", "--strategy", "intermediate"),
     "--offboard and --strategy cannot be given together"),
    ("finetune-offboard-binary-data", _finetune("--offboard", "--binary-data", "bstar"),
     "--offboard and --binary-data cannot be given together"),
    ("finetune-offboard-yaml-strategy", _finetune("--config", "{d}/offboard-multi-head.yaml"),
     "offboard-multi-head.yaml: strategy applies to the online model's fine-tuning"),
    ("finetune-pretrain-data-bstar", _finetune("--pretrain-data", "{d}/gt.h5", "--binary-data", "bstar"),
     "--pretrain-data is drawn from only with binary_data b"),
    ("finetune-pretrain-data-default-bstar", _finetune("--pretrain-data", "{d}/gt.h5"),
     "--pretrain-data is drawn from only with binary_data b"),
    ("finetune-binary-data-b-replace-head", ["finetune", "--semantic-data", "{d}/gt.h5", "--model", "ls", "--out", "{o}",
                                             "--strategy", "replace-head", "--binary-data", "b"],
     "--binary-data b adds pre-training batches"),
    ("finetune-init-and-preset", ["finetune", "--init", "{d}/ck.pt", "--semantic-data", "{d}/gt.h5", "--out", "{o}",
                                  "--preset", "paper"], "--preset sets the model sizes"),
    ("finetune-with-pretrain-config", _finetune("--config", "{d}/pretrain.yaml"),
     "pretrain.yaml: stage is 'pretrain': these settings are for b2s pretrain, not b2s finetune"),
    ("pretrain-with-finetune-config", _pretrain("--config", "{d}/finetune.yaml"),
     "finetune.yaml: stage is 'finetune': these settings are for b2s finetune, not b2s pretrain"),
    ("pretrain-set-stage", _pretrain("--set", "stage=finetune"), "--set stage is 'finetune'"),
    ("pretrain-yaml-finetune-key", _pretrain("--config", "{d}/semantic.yaml"),
     "semantic.yaml: semantic_data is a fine-tuning setting"),
    ("finetune-set-data", _finetune("--set", "data=[x.h5]"), "--set data: is pre-training data"),
    ("pretrain-yaml-typo", _pretrain("--config", "{d}/typo.yaml"),
     "typo.yaml: unknown setting 'warmup_step' (did you mean 'warmup_steps'?)"),
    ("finetune-set-typo", _finetune("--set", "lrr=1e-3"), "--set: unknown setting 'lrr' (did you mean 'lr'?)"),
    ("evaluate-no-rayiou-ray-step", _evaluate("--no-rayiou", "--ray-step", "4"), "--ray-step sets the RayIoU rays"),
    ("evaluate-workers-without-checkpoint", _evaluate("--workers", "2"), "--workers apply only with --checkpoint"),
]

CONFIG_FILES = {
    "nan.yaml": "lr: .nan\n",
    "pretrain.yaml": "stage: pretrain\ndata: [x.h5]\n",
    "finetune.yaml": "stage: finetune\nsemantic_data: [x.h5]\n",
    "semantic.yaml": "semantic_data: [x.h5]\n",
    "typo.yaml": "warmup_step: 3\n",
    "offboard-multi-head.yaml": "offboard: true\nstrategy: multi-head\n",
}


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("args, message", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_refused_with_one_line(args, message, files, tmp_path, no_training):
    for name, text in CONFIG_FILES.items():
        (files / name).write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [a.format(d=files, o=out) for a in args], env=WIDE)
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, AssertionError), result.exception  # training never started
    assert "Traceback" not in result.output
    assert _lines(result.output) == [_lines(result.output)[0]] and result.output.startswith("error: "), result.output
    assert message in result.output, result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_camera_stride_auto_is_the_word_and_the_default(monkeypatch, tmp_path, files):
    """'auto' (the default) reaches the build as None; a number as itself."""
    seen = []

    def fake_build(job, progress=None):
        seen.append(job.camera_stride)
        raise SystemExit(0)

    monkeypatch.setattr("b2s_cli.commands.build_binary.run_build", fake_build)
    base = ["build-binary", "--source", "nuscenes", "--dataroot", str(files / "dataroot")]
    for extra, name in (([], "a.h5"), (["--camera-stride", "auto"], "b.h5"), (["--camera-stride", "2.5"], "c.h5")):
        result = CliRunner().invoke(app, base + ["--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert seen == [None, None, 2.5]
    assert "'auto'" in CliRunner().invoke(app, ["build-binary", "--help"], env=WIDE).output


# -- rich markup in user text: printed as it is -------------------------------------------------------
MARKUP_NAMES = ("a[/y]b", "[bold]x[/bold]")


@pytest.fixture(params=MARKUP_NAMES, ids=("closing-tag", "bold-tag"))
def odd(request, tmp_path, files) -> Path:
    """A folder whose path holds rich markup, with copies of the data files."""
    folder = tmp_path / request.param
    folder.mkdir(parents=True)
    for name in ("gt.h5", "pred.h5"):
        shutil.copy(files / name, folder / name)
    return folder


def _run(args: list[str]):
    result = CliRunner().invoke(app, [str(a) for a in args], env=WIDE)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (result.output, result.exception)
    return result


def test_markup_in_paths_is_printed_literally(odd):
    info = _run(["info", odd / "gt.h5"])
    # the title wraps at the table's width (a long path breaks over lines): compare it joined up
    assert info.exit_code == 0 and str(odd / "gt.h5") in info.output.replace("\n", ""), info.output

    scores = odd / "s.json"
    evaluate = _run(["evaluate", "--data", odd / "gt.h5", "--predictions", odd / "pred.h5", "--no-rayiou", "--out", scores])
    assert evaluate.exit_code == 0 and f"scores: {scores}" in evaluate.output, evaluate.output

    pictures = odd / "pics"
    visualize = _run(["visualize", "a", "--data", odd / "gt.h5", "--out", pictures, "--no-3d", "--no-cameras", "--frame", "0"])
    assert visualize.exit_code == 0 and str(pictures) in visualize.output, visualize.output

    missing = odd / "missing.h5"
    for args in (["info", missing], ["evaluate", "--data", missing, "--predictions", odd / "pred.h5", "--out", odd / "t.json"],
                 ["convert", "--source", "nuscenes", "--dataroot", odd, "--out", odd / "c.h5"]):
        result = _run(args)
        assert result.exit_code == 1 and len(_lines(result.output)) == 1, result.output
        assert str(args[1] if args[0] == "info" else args[2] if args[0] == "evaluate" else odd) in result.output, result.output


def test_synth_out_with_markup(tmp_path):
    out = tmp_path / "[bold]x[/bold]" / "a[/y]b"
    result = _run(["synth", "--out", out, "--scenes", "1", "--frames", "1", "--format", "occ3d", "--image-size", "64x36",
                   "--no-preview"])
    assert result.exit_code == 0, result.output
    assert f"synthetic dataset in {out}" in result.output and str(out / "ground_truth") in result.output, result.output


def test_scene_progress_and_training_result_print_markup_literally():
    from b2s_cli.commands._training import print_result
    from b2s_cli.scene_progress import RichSceneProgress, print_skipped
    from converters.jobs.scene_run import SkippedFrame

    console = Console(file=io.StringIO(), width=400, highlight=False)
    with Progress(console=console) as progress:
        bars = RichSceneProgress(progress, done="converted")
        bars.start(1, 0)
        bars.scene_started("[bold]x[/bold]")
        bars.frame_done("[bold]x[/bold]")
        bars.scene_done("[bold]x[/bold]", 1, 0)
    print_skipped(console, [SkippedFrame(scene="a[/y]", token="[bold]t", problem="bad [red]frame")])
    print_result(Path("runs/[bold]x[/bold]/checkpoint.pt"), console)
    text = console.file.getvalue()
    for literal in ("[bold]x[/bold]: 1 frames", "a[/y]", "[bold]t", "bad [red]frame", "runs/[bold]x[/bold]/checkpoint.pt"):
        assert literal in text, text
