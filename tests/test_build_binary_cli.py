"""``b2s build-binary`` end to end: the CLI, the reader-driven driver, workers, shards, resume."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import typer
from _convert_data import wrap_nuscenes_keyframe
from typer.testing import CliRunner

from b2s_cli.commands import build_binary as build_command
from b2s_core.occfile import OccDataset, ResumableWriter
from converters.errors import ConverterError
from converters.jobs.build_binary import BuildBinaryJob, BuildBinarySummary, build_binary
from converters.jobs.progress import SceneProgress


def _app() -> typer.Typer:
    # Only this command, so the test does not depend on the other commands being importable.
    app = typer.Typer()
    app.command("build-binary")(build_command.build_binary)
    app.command("unused")(lambda: None)  # two commands keep Typer from collapsing into a single-command app
    return app


def test_cli_forwards_options(monkeypatch, tmp_path):
    seen = {}

    def fake(job, progress):
        seen["job"] = job
        return BuildBinarySummary(job.out, 0, 0, 0, [])

    monkeypatch.setattr(build_command, "run_build", fake)
    result = CliRunner().invoke(_app(), [
        "build-binary", "--source", "nuplan", "--dataroot", str(tmp_path), "--out", str(tmp_path / "b.h5"),
        "--grid", "openscene", "--sweeps", "20", "--ray-sweeps", "4", "--camera-stride", "6", "--exact-rays",
        "--workers", "3", "--shard", "1/4", "--scenes", "a, b"])
    assert result.exit_code == 0, result.output
    job = seen["job"]
    assert (job.source, job.grid, job.sweeps, job.ray_sweeps, job.camera_stride) == ("nuplan", "openscene", 20, 4, 6.0)
    assert job.exact_rays and job.workers == 3 and job.shard == (1, 4) and job.scenes == ["a", "b"]
    assert job.command.startswith("b2s ")


def test_cli_builds_the_real_keyframe(nuscenes_keyframe, tmp_path):
    root = tmp_path / "nuscenes"
    wrap_nuscenes_keyframe(nuscenes_keyframe, root)
    out = tmp_path / "binary.h5"
    args = ["build-binary", "--source", "nuscenes", "--dataroot", str(root), "--out", str(out), "--grid", "occ3d"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "1 key frames built" in result.output
    data = OccDataset(out)
    assert len(data) == 1 and data.taxonomy.name == "binary" and data.source == "nuscenes"
    frame = data[0]
    assert frame.semantics is None and frame.occupancy.shape == (200, 200, 16)
    assert frame.occupancy.sum() > 5000 and frame.mask_lidar.sum() > 50_000 and frame.mask_camera.sum() > 100_000
    assert len(frame.cameras) == 6 and frame.lidar_origin is not None
    # the LiDAR calibration travels with the grid (b2s export --format openoccupancy needs it)
    assert frame.ego_from_lidar is not None and np.allclose(frame.ego_from_lidar[:3, 3], frame.lidar_origin, atol=1e-5)
    data.close()
    # a second run refuses to overwrite, with a one-line error
    again = CliRunner().invoke(_app(), args)
    assert again.exit_code == 1 and "output exists" in again.output and "Traceback" not in again.output


def test_cli_bad_options_are_one_line_errors(tmp_path):
    base = ["build-binary", "--source", "nuscenes", "--dataroot", str(tmp_path), "--out", str(tmp_path / "o.h5")]
    for extra, message in ((["--shard", "3/2"], "--shard"), (["--grid", "nonsense"], "unknown grid"), (["--workers", "0"], "--workers")):
        result = CliRunner().invoke(_app(), base + extra)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output


SMALL_GRID = "-16,-16,-1,16,16,5.4:0.4"  # plumbing only: a small grid and few rays keep this quick


def test_driver_workers_shards_and_resume(synth_root, tmp_path):
    dataroot = synth_root / "nuscenes"

    def job(name, **options):
        return BuildBinaryJob("nuscenes", dataroot, tmp_path / name, grid=SMALL_GRID, ray_sweeps=2, camera_stride=4.0, **options)

    one = build_binary(job("one.h5"))
    two = build_binary(job("two.h5", workers=2))
    assert one.scenes == two.scenes == 2 and one.frames == two.frames == 6
    a, b = OccDataset(one.out), OccDataset(two.out)
    assert [s.name for s in a.scenes] == [s.name for s in b.scenes]
    for i in range(len(a)):
        for field in ("occupancy", "mask_lidar", "mask_camera"):
            assert np.array_equal(getattr(a[i], field), getattr(b[i], field)), (i, field)
    # resume + shard: shard 0/2 is the first scene; its finished part is kept, nothing is rebuilt
    out = tmp_path / "resumed.h5"
    writer = ResumableWriter(out, grid=a.grid, taxonomy=a.taxonomy, source="nuscenes", camera_names=a.camera_names)
    first = a.scenes[0].name
    writer.write_scene(first, (a[i] for i in a.scene_indices(first)))
    resumed = build_binary(job("resumed.h5", shard=(0, 2)))
    assert (resumed.scenes, resumed.resumed, resumed.frames) == (1, 1, 0)
    kept = OccDataset(out)
    assert [s.name for s in kept.scenes] == [first] and np.array_equal(kept[2].occupancy, a[2].occupancy)
    kept.close()
    a.close()
    b.close()


class _CtrlCAfterFirstScene(SceneProgress):
    def scene_done(self, scene, frames, skipped):
        raise KeyboardInterrupt


def _file_hashes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# Each option that shapes a scene's frames, changed: (BuildBinaryJob field, value, the flag the refusal names).
OUTPUT_OPTION_CHANGES = [
    ("grid", "-16,-16,-1,16,16,5.8:0.4", "--grid"),
    ("sweeps", 4, "--sweeps"),
    ("ray_sweeps", 3, "--ray-sweeps"),
    ("camera_stride", 8.0, "--camera-stride"),
    ("exact_rays", True, "--exact-rays"),
    ("keep_points", True, "--points"),
    ("source", "nuplan", "--source"),
]


def test_resumed_build_with_other_output_options_is_refused(synth_root, tmp_path):
    dataroot = synth_root / "nuscenes"
    base = dict(grid=SMALL_GRID, ray_sweeps=2, camera_stride=4.0)
    out = tmp_path / "b.h5"
    parts = tmp_path / "b.h5.parts"
    try:
        build_binary(BuildBinaryJob("nuscenes", dataroot, out, **base), _CtrlCAfterFirstScene())
    except KeyboardInterrupt:
        pass
    before = _file_hashes(parts)
    assert len([name for name in before if name.endswith(".h5")]) == 1
    for field, value, flag in OUTPUT_OPTION_CHANGES:
        options = {**base, field: value}
        source, root = (value, synth_root / "nuplan") if field == "source" else ("nuscenes", dataroot)
        options.pop("source", None)
        try:
            build_binary(BuildBinaryJob(source, root, out, **options))
        except ConverterError as err:
            message = str(err)
            assert "holds scenes of a different build" in message and re.search(rf"[(;] ?{flag}: ", message), message
        else:
            raise AssertionError(f"a resume with another {flag} was accepted")
        assert _file_hashes(parts) == before, field
    # through the CLI: one line, exit code 1
    args = ["build-binary", "--source", "nuscenes", "--dataroot", str(dataroot), "--out", str(out), "--grid", SMALL_GRID,
            "--ray-sweeps", "2", "--camera-stride", "4", "--points"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1 and "--points: off before, on now" in result.output and "Traceback" not in result.output
    assert _file_hashes(parts) == before
    # the same options resume, with other workers
    resumed = build_binary(BuildBinaryJob("nuscenes", dataroot, out, workers=2, **base))
    assert (resumed.scenes, resumed.resumed, resumed.frames) == (2, 1, 3)
