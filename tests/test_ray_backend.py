"""``--backend ray`` of convert and build-binary (converters.jobs.ray_backend) and of autolabel
(b2s_core.apps.autolabel) on a local Ray instance of 2 CPUs.

The Ray runs must equal the local runs frame for frame, survive a worker killed mid-scene with every
frame written once, and, without Ray installed, end in one line naming the extra.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from _convert_data import write_tiny_nuplan
from typer.testing import CliRunner

from b2s_core.occfile import OccDataset
from converters.errors import ConverterError
from converters.jobs.build_binary import BuildBinaryJob, build_binary
from converters.jobs.convert import ConvertConfig, convert
from converters.jobs.progress import SceneProgress
from converters.readers.nuplan import NuPlanReader

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'b2s[ray]')")
SMALL_GRID = "-16,-16,-1,16,16,5.4:0.4"  # build-binary plumbing only: a small grid keeps it quick
TESTS = Path(__file__).resolve().parent


class KillOnceReader(NuPlanReader):
    """A nuPlan reader whose worker process dies in the middle of the first scene it reads to its
    second frame, once per ``kill_marker`` (the marker file says it happened). Loaded by Ray workers
    as the plug-in ``test_ray_backend:KillOnceReader`` (converters.readers.plugins)."""

    default_grid = "openscene"  # the nuPlan default, so the output equals a --source nuplan conversion

    def __init__(self, dataroot, *, kill_marker: str, **options) -> None:
        super().__init__(dataroot, **options)
        self.kill_marker = Path(kill_marker)

    def read_scene(self, name, on_error=None):
        for i, frame in enumerate(super().read_scene(name, on_error)):
            if i == 1:  # the first frame is in the scene's temporary part file by now
                try:
                    fd = os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass  # killed once already: this is the retry
                else:
                    os.write(fd, name.encode())
                    os.close(fd)
                    os._exit(1)  # as a SIGKILL or the OOM killer would: no cleanup, no exception
            yield frame


class _Recorder(SceneProgress):
    def __init__(self) -> None:
        self.done: list[tuple[str, int]] = []

    def scene_done(self, scene: str, frames: int, skipped: int) -> None:
        self.done.append((scene, frames))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance of 2 CPUs for the module (start-up takes seconds); the drivers join it."""
    import ray

    # Ray workers import the plug-in reader and tests/_convert_data from here: they inherit this
    # environment, not pytest's sys.path.
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), previous]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous


@pytest.fixture(scope="module")
def nuplan(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuplan")
    write_tiny_nuplan(root, scenes=4, sweeps_per_scene=22)  # 3 key frames per scene
    return root


def _same_frames(a_path: Path, b_path: Path, fields: tuple[str, ...]) -> int:
    a, b = OccDataset(a_path), OccDataset(b_path)
    try:
        assert [s.name for s in a.scenes] == [s.name for s in b.scenes]
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            fa, fb = a[i], b[i]
            assert (fa.scene, fa.token) == (fb.scene, fb.token), i
            for field in fields:
                va, vb = getattr(fa, field), getattr(fb, field)
                assert va is not None and np.array_equal(va, vb), (i, field)
        return len(a)
    finally:
        a.close()
        b.close()


@needs_ray
def test_convert_ray_equals_local(ray_cluster, nuplan, tmp_path):
    local = convert(ConvertConfig("nuplan", nuplan, tmp_path / "local.h5"))
    progress = _Recorder()
    on_ray = convert(ConvertConfig("nuplan", nuplan, tmp_path / "ray.h5", workers=2, backend="ray"), progress)
    assert (on_ray.scenes, on_ray.frames, on_ray.skipped) == (local.scenes, local.frames, []) == (4, 12, [])
    assert sorted(progress.done) == sorted((s, 3) for s in NuPlanReader(nuplan).scene_names())
    assert _same_frames(local.out, on_ray.out, ("occupancy", "points", "global_from_ego")) == 12
    assert not (tmp_path / "ray.h5.parts").exists()  # merged, parts removed


@needs_ray
def test_build_binary_ray_equals_local(ray_cluster, synth_root, tmp_path):
    def job(name, **options):
        return BuildBinaryJob("nuscenes", synth_root / "nuscenes", tmp_path / name, grid=SMALL_GRID, ray_sweeps=2,
                              camera_stride=4.0, **options)

    local = build_binary(job("local.h5"))
    on_ray = build_binary(job("ray.h5", workers=2, backend="ray"))
    assert (on_ray.scenes, on_ray.frames) == (local.scenes, local.frames) == (2, 6)
    assert _same_frames(local.out, on_ray.out, ("occupancy", "mask_lidar", "mask_camera")) == 6


@needs_ray
def test_killed_worker_is_retried_every_frame_once(ray_cluster, nuplan, tmp_path):
    marker = tmp_path / "killed"
    reference = convert(ConvertConfig("nuplan", nuplan, tmp_path / "local.h5"))
    config = ConvertConfig("test_ray_backend:KillOnceReader", nuplan, tmp_path / "ray.h5", workers=2, backend="ray",
                           reader_options={"kill_marker": str(marker)})
    summary = convert(config)
    assert marker.is_file()  # a worker did die mid-scene ...
    assert summary.frames == reference.frames == 12  # ... and its scene was redone whole, once
    assert _same_frames(reference.out, summary.out, ("occupancy", "points")) == 12


@needs_ray
def test_converter_error_stops_the_run_in_one_line(ray_cluster, tmp_path):
    root = tmp_path / "nuplan"
    write_tiny_nuplan(root)
    lidar = sorted((root / "sensor_blobs").rglob("*.pcd"))[0]
    lidar.write_bytes(b"not a point cloud")
    with pytest.raises(ConverterError) as caught:
        convert(ConvertConfig("nuplan", root, tmp_path / "ray.h5", workers=2, backend="ray", on_error="stop"))
    assert lidar.name in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "ray.h5").exists()


def test_ray_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when not installed
    with pytest.raises(ConverterError, match=r"pip install 'b2s\[ray\]'"):
        ConvertConfig("nuplan", tmp_path, tmp_path / "out.h5", backend="ray")
    from b2s_cli.commands import convert as convert_command

    app = typer.Typer()
    app.command("convert")(convert_command.convert)
    app.command("unused")(lambda: None)  # two commands keep Typer from collapsing into a single-command app
    result = CliRunner().invoke(app, ["convert", "--source", "nuplan", "--dataroot", str(tmp_path),
                                      "--out", str(tmp_path / "out.h5"), "--backend", "ray"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "b2s[ray]" in lines[0], result.output
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "out.h5.parts").exists()


def test_ray_address_needs_the_ray_backend(tmp_path):
    with pytest.raises(ConverterError, match="needs --backend ray"):
        ConvertConfig("nuplan", tmp_path, tmp_path / "out.h5", ray_address="auto")


@needs_ray
def test_autolabel_ray_equals_local(ray_cluster, tmp_path):
    from _eval_data import make_frames, write_file
    from test_evaluate_checkpoint import GRID16, save_tiny_checkpoint

    from b2s_cli.app import app

    # Scene "b" is the longer: its task starts first, so the merge must restore the file's order.
    rng = np.random.default_rng(5)
    scenes = {name: make_frames(rng, name, count, grid=GRID16) for name, count in (("a", 1), ("b", 2))}
    data = write_file(tmp_path / "data.h5", scenes, grid=GRID16)
    checkpoint = save_tiny_checkpoint(tmp_path / "offboard.pt", offboard=True)
    outputs = {}
    for backend in ("local", "ray"):
        outputs[backend] = tmp_path / f"labels-{backend}.h5"
        result = CliRunner().invoke(app, ["autolabel", "--checkpoint", str(checkpoint), "--data", str(data), "--top2",
                                          "--out", str(outputs[backend]), "--device", "cpu", "--backend", backend])
        assert result.exit_code == 0 and "3 frames" in result.output, result.output
    fields = ("occupancy", "semantics", "top2_labels", "top2_logits", "top2_support", "mask_camera")
    assert _same_frames(outputs["local"], outputs["ray"], fields) == 3
    assert not (tmp_path / "labels-ray.h5.parts").exists()  # merged, parts removed


def test_autolabel_ray_refuses_gpus_in_one_line(tmp_path):
    from b2s_cli.app import app

    result = CliRunner().invoke(app, ["autolabel", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(tmp_path / "d.h5"),
                                      "--top1", "--out", str(tmp_path / "x.h5"), "--backend", "ray", "--gpus", "2"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "--gpus" in lines[0] and "--backend ray" in lines[0], result.output
    assert not (tmp_path / "x.h5.parts").exists()


def test_autolabel_ray_missing_is_one_line(monkeypatch, tmp_path):
    from b2s_cli.app import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when not installed
    result = CliRunner().invoke(app, ["autolabel", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(tmp_path / "d.h5"),
                                      "--top1", "--out", str(tmp_path / "x.h5"), "--backend", "ray"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "b2s[ray]" in lines[0], result.output
    assert not (tmp_path / "x.h5.parts").exists()
