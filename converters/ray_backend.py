"""The Ray engine of the scene-by-scene run (``--backend ray`` of ``b2s convert`` and ``b2s build-binary``).

The same work as the local pool of :func:`converters.scene_run.run_scenes`, scheduled by Ray:

* one Ray task per scene, submitted longest first (:meth:`SceneReader.scene_length`), so that the
  long logs do not start last and leave one worker busy while the others idle;
* each task re-creates the reader from ``task.reader_kwargs`` (once per Ray worker process, as a
  spawned local worker does) and calls ``task.run``, which writes the scene's part file atomically
  (:class:`b2s_core.occfile.ResumableWriter`); the driver merges the parts as before;
* a task whose worker process dies (killed, out of memory, node lost) is re-run by Ray, up to
  :data:`MAX_RETRIES` times; a half-written part is only a temporary file, so the retry writes the
  scene whole and the merge sees every frame once. A :class:`ConverterError` is not a failure of
  the machine: it is never retried and stops the run (``--on-error stop``) as it does locally;
* progress is reported per finished scene; an error or Ctrl-C cancels the tasks still running.

``ray`` is an optional extra (``pip install 'b2s[ray]'``), imported only when the backend is used.
The part files must be on storage every Ray node sees (one machine, or a shared file system).
"""

from __future__ import annotations

import pickle
from typing import Any

from b2s_core.errors import B2SError
from converters import open_reader
from converters.base import SceneReader
from converters.errors import ConverterError
from converters.progress import SceneProgress

BACKENDS = ("local", "ray")
MAX_RETRIES = 3  # re-runs of a scene whose worker process died; a fourth death stops the run
_INSTALL = "pip install 'b2s[ray]'"


def import_ray():
    """The ``ray`` module, or a :class:`ConverterError` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConverterError("--backend ray", f"Ray is not installed; install the ray extra: {_INSTALL}") from None
    return ray


def check_backend(backend: str, ray_address: str | None) -> None:
    """``--backend`` / ``--ray-address`` of convert and build-binary, checked before the dataset is opened."""
    if backend not in BACKENDS:
        raise ConverterError(backend, f"--backend must be one of {', '.join(BACKENDS)}")
    if ray_address and backend != "ray":
        raise ConverterError(ray_address, "--ray-address joins a Ray cluster; it needs --backend ray")
    if backend == "ray":
        import_ray()


# -- in a Ray worker process --------------------------------------------------------------------------
_READERS: dict[bytes, SceneReader] = {}  # reader_kwargs (pickled) -> the reader this worker opened


def _reader_of(reader_kwargs: dict) -> SceneReader:
    # A Ray worker process runs many tasks, of this run and of later ones: open each dataset once.
    key = pickle.dumps(sorted(reader_kwargs.items(), key=lambda item: item[0]))
    if key not in _READERS:
        _READERS.clear()  # one dataset at a time: a nuScenes trainval table load holds GBs
        _READERS[key] = open_reader(**reader_kwargs)
    return _READERS[key]


def _scene_task(task: Any, scene: str) -> tuple[str, int, list, B2SError | None]:
    """One scene in a Ray worker -> (scene, frames written, frames skipped, the error that stops the run).

    A B2SError (bad input, ``--on-error stop``) comes back as a value, not raised: Ray would wrap it
    in its own error class with the worker's traceback, and the user is owed the one-line message.
    """
    try:
        count, skipped = task.run(_reader_of(task.reader_kwargs), scene, None)
    except B2SError as err:
        return scene, 0, [], err
    return scene, count, skipped, None


# -- in the driver --------------------------------------------------------------------------------
def run_scenes_ray(task: Any, reader: SceneReader, todo: list[str], *, workers: int, address: str | None,
                   progress: SceneProgress) -> tuple[int, list]:
    """Run ``task`` over the scenes ``todo`` as Ray tasks; returns (frames written, frames skipped).

    ``address``: a running Ray cluster to join (``ray start --head`` prints it; ``auto`` finds the
    local one). Without it, and unless this process already called ``ray.init``, a Ray instance
    with ``workers`` CPUs is started here and stopped at the end.
    """
    if not todo:
        return 0, []
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        return _run(ray, task, reader, todo, progress)
    finally:
        if started_here:
            ray.shutdown()


def _run(ray, task: Any, reader: SceneReader, todo: list[str], progress: SceneProgress) -> tuple[int, list]:
    # max_retries re-runs a task whose worker died; retry_exceptions=False: an exception the task
    # raises (a bug, bad input) would only fail again, so it is not retried.
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(_scene_task)
    task_ref = ray.put(task)  # shipped to the object store once, not once per scene
    # Longest first; sorted() is stable, so scenes of equal length keep the dataset's order.
    order = sorted(todo, key=lambda scene: -reader.scene_length(scene))
    scene_of = {remote.remote(task_ref, scene): scene for scene in order}
    pending = list(scene_of)
    frames, skipped = 0, []
    try:
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            try:
                scene, count, bad, err = ray.get(finished[0])
            except ray.exceptions.RayTaskError as failed:  # an unexpected exception in the task: a bug, shown whole
                cause = getattr(failed, "cause", None)
                raise cause if isinstance(cause, Exception) else failed from None
            except ray.exceptions.RayError as failed:  # its worker died once more than MAX_RETRIES allow
                raise ConverterError(scene_of[finished[0]], f"Ray lost the scene's worker {MAX_RETRIES + 1} times "
                                                            f"({type(failed).__name__}); rerun to resume") from None
            if err is not None:
                raise err
            frames += count
            skipped += bad
            progress.scene_done(scene, count, len(bad))
    finally:
        # An error, Ctrl-C or SIGTERM: stop the scenes still running. force=True kills their worker
        # processes; what they were writing stays a temporary file, cleared by the next run.
        for ref in pending:
            ray.cancel(ref, force=True)
    return frames, skipped


__all__ = ["BACKENDS", "MAX_RETRIES", "check_backend", "import_ray", "run_scenes_ray"]
