"""Faults of the machine, not of the input: a full or read-only disk, a killed run, a killed parent.

Each write failure must end in one line naming the file and the problem, exit code 1, no
traceback, no temporary file left behind and every existing file unchanged.

Disk full is simulated two ways, without root or a small file system:
- ``os.replace`` (the last step of every atomic writer) raising the errno: one line, exit 1, temp removed;
- the HDF5 writer's own descriptor pointed at ``/dev/full`` mid-write (real HDF5 failures, which
  used to end in a segfault at exit): run in a subprocess, whose exit code is then checked.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.occfile import OccDataset, OccWriter, ResumableWriter

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EIO: "input/output error",
}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _temps(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name]


def _convert_args(synth_root: Path, out: Path) -> list[str]:
    from b2s_core.synth import load_manifest

    manifest = load_manifest(synth_root)
    return ["convert", "--source", "nuscenes", "--dataroot", str(manifest.path("nuscenes")), "--version",
            manifest.nuscenes_version, "--labels", f"occ3d:{manifest.path('occ3d')}", "--out", str(out)]


# -- every command: a failed write is one line, exit 1, nothing left, nothing changed ----------------
def _tiny_eval_files(folder: Path) -> tuple[Path, Path]:
    from tests._eval_data import make_frames, prediction_of, write_file

    rng = np.random.default_rng(0)
    frames = make_frames(rng, "a", 2)
    data = write_file(folder / "data.h5", {"a": frames})
    preds = write_file(folder / "preds.h5", {"a": [prediction_of(f, rng) for f in frames]})
    return data, preds


def _command(name: str, inputs: Path, out: Path, synth_root: Path) -> list[str]:
    """The command line of one case; ``inputs`` holds what it reads, ``out`` is a folder to write into."""
    if name == "synth":
        return ["synth", "--out", str(out / "world"), "--scenes", "1", "--frames", "1", "--format", "occ3d"]
    if name == "convert":
        return [*_convert_args(synth_root, out / "o.h5"), "--no-points", "--overwrite"]
    if name == "build-binary":
        from b2s_core.synth import load_manifest

        manifest = load_manifest(synth_root)
        return ["build-binary", "--source", "nuscenes", "--dataroot", str(manifest.path("nuscenes")), "--version",
                manifest.nuscenes_version, "--grid", "occ3d", "--scenes", manifest.scene_names[0],
                "--out", str(out / "o.h5"), "--overwrite"]
    if name == "evaluate":
        return ["evaluate", "--data", str(inputs / "data.h5"), "--predictions", str(inputs / "preds.h5"),
                "--out", str(out / "scores.json"), "--no-rayiou", "--overwrite"]
    if name == "visualize":
        return ["visualize", "a", "--data", str(inputs / "data.h5"), "--pred", str(inputs / "preds.h5"),
                "--out", str(out), "--no-3d", "--overwrite"]
    if name == "pretrain":
        return ["pretrain", "--data", str(inputs / "toy.h5"), "--out", str(out / "run"), "--preset", "tiny",
                "--batch-size", "2", "--workers", "0", "--device", "cpu", "--max-steps", "1"]
    raise AssertionError(name)


# (command, errno, the written file that fails: any whose name contains this)
CASES = [
    ("synth", errno.EROFS, ""),
    ("convert", errno.ENOSPC, ".h5"),
    ("build-binary", errno.EDQUOT, ".h5"),
    ("evaluate", errno.EIO, "scores.json"),
    ("visualize", errno.ENOSPC, ""),
    ("pretrain", errno.EACCES, "checkpoint.pt"),  # the checkpoint save (config.yaml has its own writer)
]


@pytest.mark.parametrize("command, code, named", CASES, ids=[c[0] for c in CASES])
def test_failed_write_is_one_line_exit_1_and_leaves_nothing(command, code, named, synth_root, tmp_path, monkeypatch):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    _tiny_eval_files(inputs)
    if command == "pretrain":
        from b2s_core.data.toy import write_toy_dataset

        write_toy_dataset(inputs / "toy.h5", 2, seed=1, with_semantics=False)
    (out / "o.h5").write_bytes(b"an older output, kept as it is")
    (out / "scores.json").write_text("{}")
    before = _hashes(out)
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if str(out) in os.fspath(src) and named in os.fspath(dst):  # the last step of an atomic write
            raise OSError(code, os.strerror(code), os.fspath(src), None, os.fspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    result = CliRunner().invoke(app, _command(command, inputs, out, synth_root))
    monkeypatch.setattr(os, "replace", real_replace)
    err = result.stderr.strip()
    assert result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {out}") and err.endswith(f": {PROBLEMS[code]}"), err
    assert ".tmp" not in err and named in err, err  # names the file the user asked for, not a temporary one
    assert not _temps(out), _temps(out)
    after = _hashes(out)
    assert {k: v for k, v in after.items() if k in before} == before  # existing files unchanged
    new = [k for k in after if k not in before and not k.startswith(("o.h5.parts/", "run/"))]
    assert not new, new  # nothing new but resumable parts and a training run's logs


def test_every_errno_of_a_write_has_its_line(tmp_path, monkeypatch):
    from b2s_cli.errors import one_line

    for code, problem in PROBLEMS.items():
        err = OSError(code, os.strerror(code), str(tmp_path / ".x.h5.tmp-1-abcdef12"), None, str(tmp_path / "x.h5"))
        assert one_line(err) == f"{tmp_path / 'x.h5'}: {problem}"
    h5py_text = OSError(28, "Can't close file (file write failed: ..., filename = '/d/o.h5', errno = 28, ...)")
    assert one_line(h5py_text) == "/d/o.h5: no space left on device"


# -- real HDF5 write failures: the writer's descriptor on /dev/full ---------------------------------
_FULL_DISK_RUN = textwrap.dedent("""
    import os, sys
    from b2s_core import occfile

    HOOKED = sys.argv[1]

    def fill_disk_after_first(method):
        original = getattr(occfile.OccWriter, method)
        def wrapped(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            if self.path.name.startswith(HOOKED):  # from now on every write of this file fails: ENOSPC
                os.dup2(os.open("/dev/full", os.O_WRONLY), self._h5.id.get_vfd_handle())
            return result
        setattr(occfile.OccWriter, method, wrapped)

    fill_disk_after_first("_write_frame")
    fill_disk_after_first("_copy_scene")
    sys.argv = ["b2s", *sys.argv[2:]]
    from b2s_cli.app import main
    main()
""")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("stage", ["scene", "merge"])
def test_disk_full_inside_hdf5_ends_in_one_line_not_a_segfault(stage, synth_root, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"an older output, kept as it is")
    before = _hashes(tmp_path)
    hooked = "scene-0001" if stage == "scene" else "o.h5"  # a part of the first scene, or the merged file
    run = subprocess.run([sys.executable, "-c", _FULL_DISK_RUN, hooked, *_convert_args(synth_root, out),
                          "--no-points", "--overwrite"],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])  # was -11 / 139: a segfault at exit
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].endswith(": no space left on device"), run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not _temps(tmp_path), _temps(tmp_path)
    assert _hashes(tmp_path)["o.h5"] == before["o.h5"]


# -- a killed run's temporary files ------------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # gone now (reused only after the pid space wraps)


def test_rerun_removes_temporary_files_of_dead_runs_only(tmp_path):
    from tests._eval_data import make_frames, write_file

    rng = np.random.default_rng(1)
    out = tmp_path / "o.h5"
    dead = tmp_path / f".o.h5.tmp-{_dead_pid()}-0123abcd"
    alive = tmp_path / f".o.h5.tmp-{os.getppid()}-0123abcd"  # a live process: maybe a writer at work
    other = tmp_path / f".other.h5.tmp-{_dead_pid()}-0123abcd"  # another target's
    for path in (dead, alive, other):
        path.write_bytes(b"half a file")
    write_file(out, {"a": make_frames(rng, "a", 2)})
    assert not dead.exists() and alive.exists() and other.exists()
    assert len(OccDataset(out)) == 2


def test_killed_merge_is_cleared_and_redone_by_the_rerun(synth_root, tmp_path):
    out = tmp_path / "o.h5"
    args = [*_convert_args(synth_root, out), "--no-points"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    reference = OccDataset(out)
    expected = [reference.read(i).occupancy for i in range(len(reference))]
    reference.close()
    out.unlink()
    # What a merge killed with SIGKILL leaves: parts (made again here) and its temporary file.
    leftover = tmp_path / f".o.h5.tmp-{_dead_pid()}-0123abcd"
    leftover.write_bytes(b"\x89HDF\r\n\x1a\n half a merge")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert not leftover.exists() and not _temps(tmp_path)
    merged = OccDataset(out)
    assert all(np.array_equal(merged.read(i).occupancy, grid) for i, grid in enumerate(expected))


def test_unreadable_part_is_redone_on_resume(tmp_path):
    from tests._eval_data import CAMERA, SMALL, make_frames

    rng = np.random.default_rng(2)
    writer = ResumableWriter(tmp_path / "o.h5", grid=SMALL, taxonomy="occ3d", source="x", camera_names=[CAMERA])
    writer.write_scene("a", make_frames(rng, "a", 2))
    part = writer.part_path("a")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated, as a full disk once left it
    assert not writer.is_done("a") and not part.exists()


def test_writer_failure_names_the_target_and_removes_its_temp(tmp_path, monkeypatch):
    import h5py

    from tests._eval_data import CAMERA, SMALL, make_frames

    rng = np.random.default_rng(3)
    out = tmp_path / "o.h5"

    def full(self):
        raise OSError(errno.ENOSPC, "Can't flush (file write failed: errno = 28, error message = 'No space left')")

    monkeypatch.setattr(h5py.File, "flush", full)
    with pytest.raises(OSError) as caught:
        with OccWriter(out, grid=SMALL, taxonomy="occ3d", source="x", camera_names=[CAMERA]) as writer:
            writer.write_scene("a", make_frames(rng, "a", 1))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    assert os.listdir(tmp_path) == []


# -- workers die with their parent --------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Each frame takes 3 s to write: a worker orphaned mid-scene would go on writing for several seconds.
_SLOW_FRAMES_RUN = textwrap.dedent("""
    import sys, time
    from b2s_core import occfile

    original = occfile.OccWriter._write_frame
    def slow(self, *args, **kwargs):
        time.sleep(3.0)
        return original(self, *args, **kwargs)
    occfile.OccWriter._write_frame = slow
    sys.argv = ["b2s", *sys.argv[1:]]
    from b2s_cli.app import main
    main()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_parent(synth_root, tmp_path):
    out = tmp_path / "o.h5"
    parts = tmp_path / "o.h5.parts"
    parent = subprocess.Popen([sys.executable, "-c", _SLOW_FRAMES_RUN, *_convert_args(synth_root, out), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and parent.poll() is None:  # a worker is writing a part
            workers = _children(parent.pid)
            if workers and parts.is_dir() and any(".tmp-" in p.name for p in parts.iterdir()):
                break
            time.sleep(0.01)
        assert parent.poll() is None and workers, "the run ended before a worker was seen writing"
        workers = _children(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_running(w) for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if _running(w)], "workers outlived their parent"
        snapshot = {p.name: p.stat().st_size for p in parts.iterdir()}
        time.sleep(1.0)
        assert {p.name: p.stat().st_size for p in parts.iterdir()} == snapshot  # nobody writes any more
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
