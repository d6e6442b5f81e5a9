"""``b2s convert`` through Typer: options forwarded, progress and summary printed, errors as one line."""

from __future__ import annotations

import typer
from _convert_data import write_tiny_nuplan
from typer.testing import CliRunner

from b2s_cli.commands import convert as convert_command
from b2s_core.occfile import OccDataset
from converters.jobs.convert import ConvertSummary


def _app() -> typer.Typer:
    # Only this command, so the test does not depend on the other commands being importable.
    app = typer.Typer()
    app.command("convert")(convert_command.convert)
    app.command("unused")(lambda: None)  # two commands keep Typer from collapsing into a single-command app
    return app


def test_cli_forwards_options(monkeypatch, tmp_path):
    seen = {}

    def fake(config, progress):
        seen["config"] = config
        return ConvertSummary(config.out, 0, 0, 0, [])

    monkeypatch.setattr(convert_command, "run_convert", fake)
    result = CliRunner().invoke(_app(), [
        "convert", "--source", "nuscenes", "--dataroot", str(tmp_path), "--version", "v1.0-trainval",
        "--labels", f"occ3d:{tmp_path}", "--scenes", "scene-0001, scene-0002", "--out", str(tmp_path / "o.h5"),
        "--workers", "3", "--shard", "1/4", "--embed-images", "--on-error", "stop"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.source, config.version, config.labels) == ("nuscenes", "v1.0-trainval", f"occ3d:{tmp_path}")
    assert config.scenes == ["scene-0001", "scene-0002"] and config.workers == 3 and config.shard == (1, 4)
    assert config.embed_images and config.on_error == "stop" and config.command.startswith("b2s ")


def test_cli_end_to_end_with_skipped_table(tmp_path):
    truth = write_tiny_nuplan(tmp_path / "np")
    (truth["sensor_root"] / truth["scenes"]["scene-0001"][0]["lidar"]).unlink()
    out = tmp_path / "o.h5"
    result = CliRunner().invoke(_app(), ["convert", "--source", "nuplan", "--dataroot", str(tmp_path / "np"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scene-0000: 2 frames" in result.output and "1 skipped frames" in result.output
    assert "LiDAR file not found" in result.output
    assert len(OccDataset(out)) == 3


def test_cli_bad_input_is_one_line_error(tmp_path):
    result = CliRunner().invoke(_app(), ["convert", "--source", "nuplan", "--dataroot", str(tmp_path / "none"),
                                         "--out", str(tmp_path / "o.h5")])
    assert result.exit_code == 1
    assert "error:" in result.output and "dataset root not found" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(_app(), ["convert", "--source", "nuplan", "--dataroot", str(tmp_path),
                                         "--out", str(tmp_path / "o.h5"), "--shard", "5/2"])
    assert result.exit_code == 1 and "--shard must be i/N" in result.output
