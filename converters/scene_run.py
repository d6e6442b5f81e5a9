"""The scene-by-scene run that ``b2s convert`` and ``b2s build-binary`` share.

Both drivers select the scenes of their shard, turn a reader's open errors into skipped-frame
rows, and hand each scene still to do to a *task* that writes it into its own part file: in this
process, or in a pool of worker processes. The task is what differs between the two:

    task.reader_kwargs                        how a spawned worker opens its own reader
    task.run(reader, scene, on_frame)         one scene -> (frames written, frames skipped)

A task must pickle (it travels to spawned workers) and holds everything else it needs (the
ResumableWriter of the run, the options).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters import open_reader
from converters.base import SceneReader
from converters.errors import ConverterError
from converters.progress import SceneProgress


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


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N); None -> (0, 1)."""
    if not text:
        return (0, 1)
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConverterError(text, "--shard must look like i/N, e.g. 0/4") from None
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
    """Every N-th scene of the reader starting at i, for shard (i, N); none is an error."""
    index, count = shard
    scenes = reader.scene_names()[index::count]
    if not scenes:
        raise ConverterError(dataroot, f"no scene selected (shard {index}/{count} of {len(reader.scene_names())})")
    return scenes


# -- worker processes -----------------------------------------------------------------------------
_WORKER: dict = {}


def _worker_init(task: Any) -> None:
    # Under 'fork' the parent's reader is inherited (no second load of its tables); under 'spawn'
    # each worker opens its own.
    if "reader" not in _WORKER:
        _WORKER["reader"] = open_reader(**task.reader_kwargs)
    _WORKER["task"] = task


def _worker_scene(scene: str) -> tuple[str, int, list[SkippedFrame]]:
    count, skipped = _WORKER["task"].run(_WORKER["reader"], scene, None)
    return scene, count, skipped


def run_scenes(task: Any, reader: SceneReader, todo: list[str], *, workers: int,
               progress: SceneProgress) -> tuple[int, list[SkippedFrame]]:
    """Run ``task`` over the scenes ``todo``; returns (frames written, frames skipped).

    One worker (or one scene): in this process, with per-frame progress. Otherwise a pool of
    ``workers`` processes, progress per finished scene.
    """
    frames, skipped = 0, []
    if workers == 1 or len(todo) <= 1:
        for scene in todo:
            progress.scene_started(scene)
            n, bad = task.run(reader, scene, progress.frame_done)
            frames += n
            skipped += bad
            progress.scene_done(scene, n, len(bad))
        return frames, skipped
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        _WORKER.update(reader=reader)
    context = multiprocessing.get_context(method)
    try:
        with context.Pool(min(workers, len(todo)), initializer=_worker_init, initargs=(task,)) as pool:
            for scene, n, bad in pool.imap_unordered(_worker_scene, todo):
                frames += n
                skipped += bad
                progress.scene_done(scene, n, len(bad))
    finally:
        _WORKER.clear()  # never hand this run's reader to a later run's workers
    return frames, skipped


__all__ = ["SkippedFrame", "check_run_options", "open_error_skips", "parse_shard", "run_scenes", "select_scenes"]
