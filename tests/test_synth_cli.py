"""``b2s synth``: options are forwarded to the library, errors are one line, a real run writes a dataset."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.synth import SynthManifest

runner = CliRunner()


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
