"""``b2s synth``: options are forwarded to the library, errors are one line, a real run writes a dataset."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.synth import SynthManifest

runner = CliRunner()
WIDE = {"COLUMNS": "300"}  # one line per error panel
CUSTOM = "-40,-40,-1,40,40,5.4:0.4"


def test_options_are_forwarded(monkeypatch, tmp_path):
    seen = {}

    def fake_write(out, **kwargs):
        seen.update(kwargs, out=out)
        kwargs["progress"](3, 3)
        return SynthManifest(tmp_path, {"formats": {"nuscenes": {"root": "nuscenes", "version": "v1"}}, "scenes": []})

    monkeypatch.setattr("b2s_cli.commands.synth.write_dataset", fake_write)
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "o"), "--scenes", "3", "--frames", "4", "--format",
                                 "nuscenes,nuplan", "--image-size", "320x180", "--seed", "5", "--grid", "occ3d,openscene",
                                 "--no-preview"])
    assert result.exit_code == 0, result.output
    assert seen["scenes"] == 3 and seen["frames"] == 4 and seen["seed"] == 5
    assert seen["formats"] == ["nuscenes", "nuplan"] and seen["image_size"] == (320, 180)
    assert seen["grids"] == ["occ3d", "openscene"] and seen["overwrite"] is False


def test_full_resolution_and_bad_sizes(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("b2s_cli.commands.synth.write_dataset",
                        lambda out, **kw: seen.update(kw) or SynthManifest(tmp_path, {"formats": {}, "scenes": []}))
    assert runner.invoke(app, ["synth", "--out", str(tmp_path), "--image-size", "full", "--no-preview"]).exit_code == 0
    assert seen["image_size"] is None
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path), "--image-size", "big"])
    assert bad.exit_code == 1 and "must look like 400x225" in bad.output


def test_real_run_and_refusing_a_used_folder(tmp_path):
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--scenes", "1", "--frames", "1", "--format", "nuscenes,occ3d", "--image-size", "64x36"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "synth_manifest.json").read_text())
    assert manifest["scenes"][0]["name"] == "scene-0001" and (out / "preview.png").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "not empty" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0


def _grids_passed(monkeypatch, tmp_path, values: list[str]):
    """Run synth with these --grid values; (the result, the grids write_dataset got or None if not called)."""
    seen = {}
    monkeypatch.setattr("b2s_cli.commands.synth.write_dataset",
                        lambda out, **kw: seen.update(kw) or SynthManifest(tmp_path, {"formats": {}, "scenes": []}))
    args = ["synth", "--out", str(tmp_path / "o"), "--no-preview"] + [a for value in values for a in ("--grid", value)]
    return runner.invoke(app, args, env=WIDE), seen.get("grids")


@pytest.mark.parametrize("values, grids", [
    ([], []),
    (["occ3d"], ["occ3d"]),
    (["occ3d, openscene"], ["occ3d", "openscene"]),  # presets share a value, comma-separated
    ([CUSTOM], [CUSTOM]),  # a value with ':' is one custom grid: its commas separate its numbers
    (["occ3d,openscene", CUSTOM, "openoccupancy"], ["occ3d", "openscene", CUSTOM, "openoccupancy"]),
], ids=["none", "preset", "preset-list", "custom", "repeated"])
def test_each_grid_value_is_one_custom_grid_or_a_list_of_presets(values, grids, monkeypatch, tmp_path):
    result, passed = _grids_passed(monkeypatch, tmp_path, values)
    assert result.exit_code == 0, result.output
    assert passed == grids


@pytest.mark.parametrize("value", [f"occ3d,{CUSTOM}", f"{CUSTOM},openscene", f"{CUSTOM},{CUSTOM}"],
                         ids=["preset-then-custom", "custom-then-preset", "two-custom"])
def test_a_custom_grid_joined_to_other_grids_is_a_usage_error(value, monkeypatch, tmp_path):
    result, passed = _grids_passed(monkeypatch, tmp_path, ["occ3d", value])
    assert result.exit_code == 2, result.output
    assert f"'{value}' mixes a custom grid with other grids; give each custom grid its own --grid" in result.output
    assert passed is None and not (tmp_path / "o").exists()


def test_a_list_item_that_is_no_preset_is_refused_in_one_line(monkeypatch, tmp_path):
    result, passed = _grids_passed(monkeypatch, tmp_path, ["occ3d,kitti"])
    assert result.exit_code == 1 and result.output.startswith("error: --grid: unknown grid 'kitti'"), result.output
    assert passed is None and not (tmp_path / "o").exists()
