"""`b2s pretrain` / `b2s finetune`: options forwarded to the library, errors as one line, torchrun launch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.train import launch as launch_module
from b2s_core.train.config import TrainConfig


@pytest.fixture
def captured(monkeypatch):
    calls = []

    def fake_launch(config, gpus=1, **kwargs):
        calls.append((config, gpus))
        return Path(config.out) / "checkpoint.pt"

    # pretrain / finetune import launch when they run (torch stays out of `b2s --help`): patch its home
    monkeypatch.setattr("b2s_core.train.launch.launch", fake_launch)
    return calls


def test_pretrain_forwards_options_over_the_config_file(tmp_path, captured):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("epochs: 3\nlr: 1.0e-3\npreset: tiny\n")
    for name in ("a.h5", "b.h5"):
        (tmp_path / name).touch()
    result = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path / "*.h5"), "--model", "ls", "--epochs", "5",
                                      "--gpus", "2", "--out", str(tmp_path / "run"), "--config", str(config_file),
                                      "--set", "warmup_steps=7"])
    assert result.exit_code == 0, result.output
    (config, gpus), = captured
    assert gpus == 2 and config.stage == "pretrain" and config.model == "ls"
    assert config.data == [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    assert (config.epochs, config.lr, config.preset, config.warmup_steps) == (5, 1e-3, "tiny", 7)


def test_finetune_forwards_the_strategy_and_binary_data(tmp_path, captured):
    result = CliRunner().invoke(app, ["finetune", "--init", "pre.pt", "--semantic-data", "s.h5", "--pseudo-data", "p.h5",
                                      "--strategy", "intermediate", "--binary-data", "b", "--pretrain-data", "b.h5",
                                      "--class-balance", "0.5", "--out", str(tmp_path / "ft")])
    assert result.exit_code == 0, result.output
    (config, _), = captured
    assert (config.stage, config.init, config.strategy, config.binary_data) == ("finetune", "pre.pt", "intermediate", "b")
    assert config.semantic_data == ["s.h5"] and config.pseudo_data == ["p.h5"] and config.pretrain_data == ["b.h5"]
    assert config.model is None and not config.offboard  # the model comes from --init
    assert config.class_balance == 0.5


def test_offboard_forwards_backbone_weights_and_the_paper_defaults(tmp_path, captured):
    assert "--backbone-weights" in CliRunner().invoke(app, ["finetune", "--help"]).output
    result = CliRunner().invoke(app, ["finetune", "--offboard", "--model", "sparse-ls", "--semantic-data", "s.h5",
                                      "--backbone-weights", "r50.pth", "--frozen-stages", "1", "--norm-eval",
                                      "--binary-balance", "0.5", "--out", str(tmp_path / "off")])
    assert result.exit_code == 0, result.output
    (config, _), = captured
    assert config.offboard and config.epochs == 64  # section 4.2
    assert (config.backbone_weights, config.frozen_stages, config.norm_eval) == ("r50.pth", 1, True)
    assert config.binary_balance == 0.5
    refused = CliRunner().invoke(app, ["finetune", "--init", "pre.pt", "--semantic-data", "s.h5",
                                       "--backbone-weights", "r50.pth", "--out", str(tmp_path / "x")])
    assert refused.exit_code == 1 and "--init already brings" in refused.output


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "missing.h5" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["finetune", "--semantic-data", "s.h5", "--binary-data", "b", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "--pretrain-data" in result.output


def test_several_gpus_relaunch_through_torchrun(tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, env):
        seen["command"], seen["env"] = command, env
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(launch_module.subprocess, "run", fake_run)
    config = TrainConfig(stage="pretrain", model="sparse-ls", data=["b.h5"], out=str(tmp_path / "run"), device="cpu")
    path = launch_module.launch(config, gpus=2)
    assert path == tmp_path / "run" / "checkpoint.pt"
    command = seen["command"]
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=2" in command
    assert command[-2:] == ["b2s_core.train.launch", str(tmp_path / "run" / "launch.yaml")]
    saved = yaml.safe_load((tmp_path / "run" / "launch.yaml").read_text())
    assert TrainConfig.from_dict(saved) == config

    monkeypatch.setattr(launch_module.subprocess, "run", lambda command, env: subprocess.CompletedProcess(command, 3))
    with pytest.raises(launch_module.LaunchError, match="exit code 3"):
        launch_module.launch(config, gpus=2)


def test_launch_entry_point_reports_errors_per_rank(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("stage: pretrain\nmodel: sparse-ls\ndata: [nowhere.h5]\ndevice: cpu\n")
    assert launch_module.main([str(tmp_path / "c.yaml")]) == 1
    assert "nowhere.h5" in capsys.readouterr().err


def test_pretrain_then_finetune_for_real_on_toy_data(tmp_path):
    from b2s_core.data.toy import write_toy_dataset
    from b2s_core.models.checkpoint import load_checkpoint

    binary = write_toy_dataset(tmp_path / "b.h5", 2, seed=1, with_semantics=False)
    semantic = write_toy_dataset(tmp_path / "s.h5", 2, seed=2)
    runner = CliRunner()
    common = ["--preset", "tiny", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--max-steps", "1"]
    result = runner.invoke(app, ["pretrain", "--data", str(binary), "--out", str(tmp_path / "pre"), *common])
    assert result.exit_code == 0, result.output
    assert "checkpoint" in result.output and (tmp_path / "pre" / "config.yaml").is_file()
    result = runner.invoke(app, ["finetune", "--init", str(tmp_path / "pre" / "checkpoint.pt"), "--semantic-data",
                                 str(semantic), "--val-data", str(semantic), "--out", str(tmp_path / "ft"),
                                 *common[2:]])  # preset from --init
    assert result.exit_code == 0, result.output
    assert "val miou" in result.output
    loaded = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")
    assert loaded.model_config.preset == "tiny" and loaded.train_settings["stage"] == "finetune"
    assert "miou" in loaded.metrics and not loaded.model.training


@pytest.mark.parametrize("name,stage", [("pretrain-sparse-ls-paper.yaml", "pretrain"), ("toy-cpu.yaml", "pretrain"),
                                        ("finetune-intermediate-sb.toml", "finetune"),
                                        ("offboard-autolabel.yaml", "finetune")])
def test_example_configs_pass_the_config_checks(name, stage):
    """The shipped configs stay valid as the checks on settings grow (unknown keys, contradictions)."""
    from b2s_core.train.config import resolve_config

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / name
    given = {"data": ["toy-binary.h5"]} if name == "toy-cpu.yaml" else {}  # its header names --data on the command line
    config = resolve_config(config_file=path, options=given, defaults={"stage": stage})
    assert config.stage == stage
