"""One consistent CLI: choice options, one spelling per thing, --device auto, --version, no torch where
none is needed, and summaries that never break a number from its unit."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from _eval_data import make_frames, write_file
from rich.console import Console
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_cli.commands import convert as convert_cli
from b2s_cli.options import OptionValueError, resolve_device
from b2s_core.synth import SynthManifest
from converters.jobs.convert import ConvertSummary

WIDE = {"COLUMNS": "300"}  # one option per line of --help, one line per error panel


def _invoke(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


# -- choice options -------------------------------------------------------------------------------------
# (command line up to the option ({o}: an output that must not appear), option, its values in order)
_EVAL = ["evaluate", "--data", "gt.h5", "--predictions", "p.h5", "--out", "{o}"]
_AUTO = ["autolabel", "--checkpoint", "off.pt", "--data", "gt.h5", "--top1", "--out", "{o}"]
_VIS = ["visualize", "s", "--data", "gt.h5", "--out", "{o}"]
_SOURCE = ["--source", "nuscenes", "--dataroot", ".", "--out", "{o}"]
_TRAIN = ["--data", "gt.h5", "--out", "{o}"]
CHOICES = [
    (_EVAL, "--protocol", ["occ3d", "openoccupancy", "openscene"]),
    (_EVAL, "--mask", ["camera", "lidar", "none"]),
    (_EVAL, "--device", ["auto", "cpu", "cuda"]),
    (_AUTO, "--form", ["paper", "given-geometry"]),
    (_AUTO, "--taxonomy", ["occ3d", "openoccupancy", "openscene", "binary"]),
    (_AUTO, "--device", ["auto", "cpu", "cuda"]),
    (["align", "--binary", "b.h5", "--labels", "l.h5"], "--mask", ["camera", "lidar", "none"]),
    (_VIS, "--mask", ["camera", "lidar", "none"]),
    (_VIS, "--camera-overlay", ["fill", "outline"]),
    (["build-binary", *_SOURCE], "--label-convention", ["none", "occ3d"]),
    (["build-binary", *_SOURCE], "--on-error", ["skip", "stop"]),
    (["convert", *_SOURCE], "--on-error", ["skip", "stop"]),
    (["pretrain", *_TRAIN], "--model", ["sparse-ls", "sparse-bevformer", "ls", "bevformer"]),
    (["pretrain", *_TRAIN], "--preset", ["paper", "small", "tiny"]),
    (["pretrain", *_TRAIN], "--amp", ["none", "bf16", "fp16"]),
    (["pretrain", *_TRAIN], "--device", ["auto", "cpu", "cuda"]),
    (["finetune", *_TRAIN[2:]], "--strategy", ["intermediate", "multi-head", "replace-head"]),
    (["finetune", *_TRAIN[2:]], "--binary-data", ["bstar", "b"]),
    (["finetune", *_TRAIN[2:]], "--model", ["sparse-ls", "sparse-bevformer", "ls", "bevformer"]),
]
CHOICE_IDS = [f"{args[0]} {option}" for args, option, _ in CHOICES]


@pytest.mark.parametrize("args, option, values", CHOICES, ids=CHOICE_IDS)
def test_a_bad_choice_is_a_usage_error_that_lists_the_values(args, option, values, tmp_path):
    out = tmp_path / "out"
    result = _invoke([a.format(o=out) for a in args] + [option, "gpu-please"])
    assert result.exit_code == 2, result.output
    listed = ", ".join(f"'{v}'" for v in values)
    assert f"Invalid value for '{option}'" in result.output and f"'gpu-please' is not one of {listed}" in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("args, option, values", CHOICES, ids=CHOICE_IDS)
def test_help_lists_the_values_of_a_choice(args, option, values):
    rows = _invoke([args[0], "--help"]).output.splitlines()
    row = next(line for line in rows if re.match(rf"│\s*\*?\s*{option}\s", line))  # the option's own row
    assert all(value in row for value in values), row


def test_synth_format_is_a_comma_separated_choice(tmp_path):
    for text, problem in (("nuscenes,kitti", "unknown 'kitti'"), (" , ", "nothing given")):
        result = _invoke(["synth", "--out", tmp_path / "o", "--format", text])
        assert result.exit_code == 2 and problem in result.output, result.output
        assert "give a comma-separated list of nuscenes, occ3d, openoccupancy, nuplan, openscene" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_copies_of_library_lists_agree():
    """Choices spelled out in the CLI (their library modules import torch) equal the library's own."""
    from b2s_cli.commands._training import Model, Preset
    from b2s_cli.commands.autolabel import Form
    from b2s_cli.commands.evaluate import Protocol
    from b2s_cli.options import Mask, OnError
    from b2s_core.apps.autolabel import FORMS
    from b2s_core.metrics.protocols import MASKS, PROTOCOLS
    from b2s_core.models.config import PRESETS, VARIANTS
    from b2s_core.viz.scene import MASKS as DRAWN_MASKS
    from converters.errors import ConverterError
    from converters.jobs.scene_run import check_run_options

    def values(choice):
        return [member.value for member in choice]

    assert values(Protocol) == list(PROTOCOLS) and values(Form) == list(FORMS)
    assert values(Model) == list(VARIANTS) and values(Preset) == list(PRESETS)
    assert values(Mask) == list(MASKS) and set(values(Mask)) == set(DRAWN_MASKS)
    for on_error in values(OnError):
        check_run_options(on_error, 1, (0, 1))
    with pytest.raises(ConverterError):
        check_run_options("retry", 1, (0, 1))


# -- --version, --device auto -----------------------------------------------------------------------------
def test_version_is_the_installed_package_version():
    result = _invoke(["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"b2s {version('b2s')}", result.output


def test_device_auto_is_cuda_when_torch_sees_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("auto"), resolve_device("cuda"), resolve_device("cpu")) == ("cuda", "cuda", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (resolve_device("auto"), resolve_device("cpu")) == ("cpu", "cpu")
    with pytest.raises(OptionValueError, match="--device cuda: torch sees no CUDA GPU"):
        resolve_device("cuda")


@pytest.fixture
def seen_devices(monkeypatch, tmp_path):
    """evaluate / autolabel / pretrain / finetune with the library stood in for: the device each got."""
    seen = {}

    def fake_evaluate(data, predictions, config, progress=None):
        seen["evaluate"] = config.device
        raise SystemExit(0)

    def fake_autolabel(checkpoint, data, out, config, progress=None, **kwargs):
        seen["autolabel"] = config.device
        raise SystemExit(0)

    def fake_launch(config, gpus=1, **kwargs):
        seen[config.stage] = config.device
        raise SystemExit(0)

    # The commands import these when they run (torch stays out of `b2s --help`): patch their homes.
    monkeypatch.setattr("b2s_core.apps.evaluate.evaluate_files", fake_evaluate)
    monkeypatch.setattr("b2s_core.apps.autolabel.autolabel", fake_autolabel)
    monkeypatch.setattr("b2s_core.train.launch.launch", fake_launch)
    for name in ("gt.h5", "p.h5", "off.pt"):
        (tmp_path / name).write_bytes(b"")
    return seen


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "no-gpu"])
def test_device_defaults_to_auto_everywhere(gpu, seen_devices, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    d = tmp_path
    for args in (["evaluate", "--data", d / "gt.h5", "--predictions", d / "p.h5", "--out", d / "s.json"],
                 ["autolabel", "--checkpoint", d / "off.pt", "--data", d / "gt.h5", "--top1", "--out", d / "l.h5"],
                 ["pretrain", "--data", d / "gt.h5", "--out", d / "pre"],
                 ["finetune", "--semantic-data", d / "gt.h5", "--model", "ls", "--out", d / "ft"]):
        result = _invoke(args)
        assert result.exit_code == 0, result.output
    # evaluate's library takes None for the CPU; training resolves 'auto' itself, by the same rule
    assert seen_devices == {"evaluate": "cuda" if gpu else None, "autolabel": "cuda" if gpu else "cpu",
                            "pretrain": "auto", "finetune": "auto"}


# -- one spelling: --predictions ---------------------------------------------------------------------------
def test_visualize_takes_predictions_and_the_old_pred_spelling(monkeypatch, tmp_path):
    from b2s_core.viz.scene import VisualizeResult

    seen = []

    def fake_visualize_scene(data, scene, out, pred_path=None, options=None, on_frame=None):
        seen.append(pred_path)
        return VisualizeResult()

    monkeypatch.setattr("b2s_cli.commands.visualize.visualize_scene", fake_visualize_scene)
    base = ["visualize", "s", "--data", tmp_path / "gt.h5", "--out", tmp_path / "pictures"]
    for spelling in ("--predictions", "--pred"):
        assert _invoke(base + [spelling, tmp_path / "p.h5"]).exit_code == 0
    assert seen == [tmp_path / "p.h5"] * 2
    both = _invoke(base + ["--predictions", tmp_path / "p.h5", "--pred", tmp_path / "q.h5"])
    assert both.exit_code == 1 and both.output.startswith("error: --predictions and --pred cannot be given together")
    errors = _invoke(base + ["--errors"])
    assert errors.exit_code == 1 and "pass a predictions file with --predictions" in errors.output, errors.output
    help_text = _invoke(["visualize", "--help"]).output
    assert "--predictions" in help_text and "--pred " not in help_text  # the old name is not listed
    assert len(seen) == 2 and not (tmp_path / "pictures").exists()


def test_synth_grid_repeats_and_lists_presets(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("b2s_cli.commands.synth.write_dataset",
                        lambda out, **kw: seen.update(kw) or SynthManifest(tmp_path, {"formats": {}, "scenes": []}))
    custom = "-40,-40,-1,40,40,5.4:0.4"
    result = _invoke(["synth", "--out", tmp_path / "o", "--no-preview", "--grid", "occ3d,openscene", "--grid", custom])
    assert result.exit_code == 0, result.output
    assert seen["grids"] == ["occ3d", "openscene", custom]


# -- torch only where a model runs ---------------------------------------------------------------------------
def test_commands_that_run_no_model_never_import_torch(tmp_path):
    """`b2s --help`, every command's --help, --version and a real `b2s info` run: torch stays unloaded."""
    data = write_file(tmp_path / "gt.h5", {"a": make_frames(np.random.default_rng(0), "a", 1)})
    script = f"""
import sys
from typer.testing import CliRunner
from b2s_cli.app import app
assert "torch" not in sys.modules, "importing b2s_cli.app loaded torch"
runner = CliRunner()
commands = ["synth", "convert", "build-binary", "align", "info", "pretrain", "finetune", "evaluate", "autolabel",
            "export", "visualize", "curves"]
for args in [["--help"], ["--version"], ["info", {str(data)!r}]] + [[name, "--help"] for name in commands]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not loaded, (args, loaded[:5])
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


# -- summaries: numbers first, the path last ----------------------------------------------------------------
def test_convert_summary_never_wraps_inside_a_number_at_80_columns(monkeypatch):
    for length in range(0, 90, 3):  # paths that move the wrap point across the whole line
        out = io.StringIO()
        monkeypatch.setattr(convert_cli, "_console", Console(file=out, width=80, highlight=False))
        path = Path("/data/" + "x" * length + "/mini.h5")
        convert_cli._print_summary(ConvertSummary(out=path, scenes=850, resumed=12, frames=34149, skipped=[], seconds=12345.6))
        lines = out.getvalue().splitlines()
        assert all(len(line) <= 80 for line in lines)
        assert lines[0].startswith("wrote 850 scenes (12 resumed) to")
        assert "34149 frames converted in 12345.6 s (0.36 s per frame)" in lines, lines
        assert "".join(lines[:-1]).endswith(str(path))  # the path whole, last on its line(s)


def test_synth_summary_puts_the_time_before_the_scene_list(monkeypatch, tmp_path):
    scenes = [{"name": f"scene-{k:04d}", "layout": "junction"} for k in range(1, 13)]
    monkeypatch.setattr("b2s_cli.commands.synth.write_dataset",
                        lambda out, **kw: SynthManifest(tmp_path, {"formats": {}, "scenes": scenes}))
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "o"), "--scenes", "12", "--no-preview"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("12 scenes x 10 key frames in "))
    assert line.split(" in ", 1)[1].split(": ")[0].endswith(" s"), line  # "in 0.0 s: scene-0001 junction, ..."
