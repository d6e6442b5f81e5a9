"""The scene-by-scene run that ``b2s convert`` and ``b2s build-binary`` share.

Both drivers select the scenes of their shard, turn a reader's open errors into skipped-frame
rows, and hand each scene still to do to a *task* that writes it into its own part file: in this
process, or in a pool of worker processes. The task is what differs between the two:

    task.reader_kwargs                        how a spawned worker opens its own reader
    task.run(reader, scene, on_frame)         one scene -> (frames written, frames skipped)

A task must pickle (it travels to spawned workers) and holds everything else it needs (the
ResumableWriter of the run, the options).

A rerun resumes from the finished parts only if it would have made them the same way: each driver
passes the options that shape a scene's frames to :func:`check_resume_options`, which records them
beside the parts on the first run and refuses a rerun with others (selection and running options
such as ``--scenes``, ``--shard``, ``--workers`` or ``--on-error`` stay free to change).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from b2s_core.grids import VoxelGrid
from b2s_core.output_paths import atomic_path
from b2s_core.shards import balanced_shares
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.progress import SceneProgress
from converters.jobs.ray_backend import run_scenes_ray  # Ray itself is imported only when a run uses it
from converters.readers.base import SceneReader


@dataclass
class SkippedFrame:
    scene: str
    token: str
    problem: str  # the one-line message, naming the file


def check_run_options(on_error: str, workers: int, shard: tuple[int, int]) -> None:
    """The options every scene-by-scene driver shares (convert, build-binary)."""
    if on_error not in ("skip", "stop"):
        raise ConverterError(on_error, "--on-error must be 'skip' or 'stop'")
    if workers < 1:
        raise ConverterError(str(workers), "--workers must be at least 1")
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ConverterError(f"{index}/{count}", "--shard must be i/N with 0 <= i < N")


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """'i/N' -> (i, N); None -> (0, 1); 'auto' -> this task's place in a SLURM job array (:func:`slurm_array_shard`)."""
    if not text:
        return (0, 1)
    if text.strip() == "auto":
        return slurm_array_shard(os.environ if environ is None else environ)
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConverterError(text, "--shard must look like i/N, e.g. 0/4") from None
    return index, count


def slurm_array_shard(environ: Mapping[str, str]) -> tuple[int, int]:
    """(i, N) of this task in a SLURM job array, from the variables sbatch sets for each array task.

    ``--array=0-7`` and ``--array=1-8`` both give shards 0/8 .. 7/8; ``--array=0-15:4`` (step 4) gives
    0/4 .. 3/4. N is SLURM_ARRAY_TASK_COUNT, else (MAX - MIN) / STEP + 1 for SLURMs that do not set
    it; i is (SLURM_ARRAY_TASK_ID - MIN) / STEP. An index list with gaps (``--array=1,5,6``) has no
    such i: give ``--shard i/N`` yourself.
    """
    if "SLURM_ARRAY_TASK_ID" not in environ:
        raise ConverterError("--shard auto", "not inside a SLURM job array (SLURM_ARRAY_TASK_ID is not set); "
                                             "submit with sbatch --array=0-N or give --shard i/N")
    try:
        task = int(environ["SLURM_ARRAY_TASK_ID"])
        low = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(environ.get("SLURM_ARRAY_TASK_STEP", "1"))
        if "SLURM_ARRAY_TASK_COUNT" in environ:
            count = int(environ["SLURM_ARRAY_TASK_COUNT"])
        else:
            count = (int(environ["SLURM_ARRAY_TASK_MAX"]) - low) // max(step, 1) + 1
    except KeyError as err:
        raise ConverterError("--shard auto", f"SLURM sets SLURM_ARRAY_TASK_ID but not {err.args[0]} "
                                             "(nor SLURM_ARRAY_TASK_COUNT); give --shard i/N") from None
    except ValueError as err:
        raise ConverterError("--shard auto", f"a SLURM_ARRAY_TASK_* variable is not a whole number ({err})") from None
    index, off_step = divmod(task - low, max(step, 1))
    if off_step or not 0 <= index < count:
        raise ConverterError("--shard auto", f"array task {task} is not one of {count} evenly spaced tasks from {low} "
                                             f"by {step}; use --array=0-{count - 1} or give --shard i/N")
    return index, count


def open_error_skips(reader: SceneReader, on_error: str) -> list[SkippedFrame]:
    """What the reader could not open (e.g. a corrupt log: left out): rows to report, or the first error raised."""
    skipped: list[SkippedFrame] = []
    for err in reader.open_errors:
        if on_error == "stop":
            raise err
        skipped.append(SkippedFrame("(whole log)", "-", str(err)))
    return skipped


def select_scenes(reader: SceneReader, shard: tuple[int, int], dataroot: Path) -> list[str]:
    """The reader's scenes that shard (i, N) holds, in dataset order (:func:`balanced_shards`); none is an error."""
    index, count = shard
    names = reader.scene_names()
    if count == 1:
        scenes = names
    else:
        scenes = balanced_shards({name: _scene_length(reader, name) for name in names}, count)[index]
    if not scenes:
        raise ConverterError(dataroot, f"no scene selected (shard {index}/{count} of {len(names)} scenes)")
    return scenes


def balanced_shards(lengths: dict[str, int], count: int) -> list[list[str]]:
    """Scene name -> key frames, split into ``count`` shards of near-equal total frames
    (:func:`b2s_core.shards.balanced_shares`; ties go by dataset order). Each shard lists its scenes
    in the order of ``lengths`` (dataset order), so its output is ordered as an unsharded run's."""
    names = list(lengths)
    return [[names[i] for i in share] for share in balanced_shares([lengths[n] for n in names], count)]


def _scene_length(reader: SceneReader, name: str) -> int:
    length = reader.scene_length(name)
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ConverterError(f"{type(reader).__module__}:{type(reader).__qualname__}",
                             f"scene_length({name!r}) returned {length!r}, not a frame count (an int >= 0)")
    return length


# -- resuming only what the same options made -------------------------------------------------------
OPTIONS_RECORD = "options.json"  # beside the part files; removed with them when the output is merged


def check_resume_options(parts_dir: Path, options: dict[str, Any], *, what: str) -> None:
    """Refuse to resume the finished parts in ``parts_dir`` with other ``options`` than made them.

    ``options`` maps a command-line flag (``--labels``) to its resolved value (JSON-serialisable).
    The first run records them in ``parts_dir/options.json`` (atomically); a later run compares. A
    differing record without any finished part is simply replaced: nothing could be mixed. Parts
    without a record (left by a b2s that kept none) are trusted, as before. ``what`` names the run in
    the message ("conversion", "build").
    """
    record = parts_dir / OPTIONS_RECORD
    options = json.loads(json.dumps(options, sort_keys=True, default=str))  # compare what the record holds
    if record.is_file():
        try:
            earlier = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            earlier = None
        if earlier == options:
            return
        if any(parts_dir.glob("*.h5")):
            raise ConverterError(parts_dir, f"holds scenes of a different {what} ({_differences(earlier, options)}); "
                                            "delete it or rerun with the same options")
    _write_record(record, options)


def _differences(earlier: Any, options: dict[str, Any]) -> str:
    """'--labels: none before, occ3d:/x now; ...' for the options whose values differ."""
    if not isinstance(earlier, dict):
        return "its options record is unreadable"
    names = sorted(set(earlier) | set(options))
    return "; ".join(f"{name}: {_shown(earlier.get(name))} before, {_shown(options.get(name))} now"
                     for name in names if earlier.get(name) != options.get(name))


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _write_record(record: Path, options: dict[str, Any]) -> None:
    # Temporary file + rename: a crash leaves the whole record or none, never half of one.
    with atomic_path(record) as temp:
        temp.write_text(json.dumps(options, sort_keys=True, indent=1))


def grid_text(grid: VoxelGrid) -> str:
    """A grid's geometry as the custom --grid spec writes it (names differ, geometry is what counts)."""
    voxel = grid.voxel_size[:1] if len(set(grid.voxel_size)) == 1 else grid.voxel_size
    return ",".join(f"{v:g}" for v in (*grid.range_min, *grid.range_max)) + ":" + ",".join(f"{v:g}" for v in voxel)


# -- worker processes -----------------------------------------------------------------------------
_WORKER: dict = {}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_POLL_S = 0.5  # how often a worker without PR_SET_PDEATHSIG checks that its parent lives


def _die_with_parent(parent: int) -> None:
    """End this worker when the process that started it ends, however it ends (SIGKILL included).

    Linux: the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG). Elsewhere, or
    if prctl is refused: a daemon thread polls the parent pid. Either way an orphan stops writing
    within a second; what it was writing stays a temporary file, cleared by the next run.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="b2s-parent-watch", daemon=True).start()


def _start_method() -> str:
    """'fork' when no other Python thread runs in this process, else 'spawn' (a fresh interpreter).

    Fork copies the parent's reader (a nuScenes trainval table load is tens of seconds and GBs per
    worker), but it copies only the forking thread: a lock another Python thread held at that
    moment (stdout, logging, an import) stays locked in the worker, which then waits forever.
    Native pools (OpenBLAS, torch's intra-op threads) re-initialise in the child through their own
    fork handlers. Not forkserver: a worker's parent must be this process (_die_with_parent).
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _worker_init(task: Any, parent: int) -> None:
    _die_with_parent(parent)
    # The parent handles Ctrl-C and termination (it terminates the pool); a worker just stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Under 'fork' the parent's reader is inherited (no second load of its tables); under 'spawn'
    # each worker opens its own.
    if "reader" not in _WORKER:
        _WORKER["reader"] = open_reader(**task.reader_kwargs)
    _WORKER["task"] = task


def _worker_scene(scene: str) -> tuple[str, int, list[SkippedFrame]]:
    count, skipped = _WORKER["task"].run(_WORKER["reader"], scene, None)
    return scene, count, skipped


def run_scenes(task: Any, reader: SceneReader, todo: list[str], *, workers: int,
               progress: SceneProgress, backend: str = "local",
               ray_address: str | None = None) -> tuple[int, list[SkippedFrame]]:
    """Run ``task`` over the scenes ``todo``; returns (frames written, frames skipped).

    One worker (or one scene): in this process, with per-frame progress. Otherwise a pool of
    ``workers`` processes, progress per finished scene. ``backend='ray'``: one Ray task per scene
    on a local Ray instance of ``workers`` CPUs or the cluster at ``ray_address``
    (:mod:`converters.jobs.ray_backend`), progress per finished scene.
    """
    if backend == "ray":
        return run_scenes_ray(task, reader, todo, workers=workers, address=ray_address, progress=progress)
    frames, skipped = 0, []
    if workers == 1 or len(todo) <= 1:
        for scene in todo:
            progress.scene_started(scene)
            n, bad = task.run(reader, scene, progress.frame_done)
            frames += n
            skipped += bad
            progress.scene_done(scene, n, len(bad))
        return frames, skipped
    method = _start_method()
    if method == "fork":
        _WORKER.update(reader=reader)
    context = multiprocessing.get_context(method)
    try:
        # Leaving the block (done, an error, Ctrl-C, SIGTERM) terminates the workers; a parent
        # killed outright takes them with it (_die_with_parent).
        with _terminate_on_sigterm(), context.Pool(min(workers, len(todo)), initializer=_worker_init,
                                                   initargs=(task, os.getpid())) as pool:
            for scene, n, bad in pool.imap_unordered(_worker_scene, todo):
                frames += n
                skipped += bad
                progress.scene_done(scene, n, len(bad))
    finally:
        _WORKER.clear()  # never hand this run's reader to a later run's workers
    return frames, skipped


@contextlib.contextmanager
def _terminate_on_sigterm():
    """SIGTERM raises SystemExit(143) in the block, so that the pool and writers clean up on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["OPTIONS_RECORD", "SkippedFrame", "check_resume_options", "check_run_options", "grid_text", "open_error_skips",
           "parse_shard", "run_scenes", "select_scenes", "balanced_shards", "slurm_array_shard"]
