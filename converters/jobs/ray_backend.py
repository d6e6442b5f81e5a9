"""The Ray engine of the scene-by-scene run (``--backend ray`` of ``b2s convert`` and ``b2s build-binary``).

The same work as the local pool of :func:`converters.jobs.scene_run.run_scenes`, scheduled by Ray:

* one Ray task per scene, submitted longest first (:meth:`SceneReader.scene_length`), so that the
  long logs do not start last and leave one worker busy while the others idle;
* each task re-creates the reader from ``task.reader_kwargs`` (once per Ray worker process, as a
  spawned local worker does) and calls ``task.run``, which writes the scene's part file atomically
  (:class:`b2s_core.occfile.ResumableWriter`); the driver merges the parts as before;
* a task whose worker process dies (killed, out of memory, node lost) is re-run by Ray, up to
  :data:`b2s_core.ray_engine.MAX_RETRIES` times; a half-written part is only a temporary file, so the retry writes the
  scene whole and the merge sees every frame once. A :class:`ConverterError` is not a failure of
  the machine: it is never retried and stops the run (``--on-error stop``) as it does locally;
* progress is reported per finished scene; an error or Ctrl-C cancels the tasks still running.

The engine-neutral parts (importing Ray, the session, retries, the cancel-on-error loop) are
:mod:`b2s_core.ray_engine`, shared with ``b2s autolabel --backend ray``. The part files must be
on storage every Ray node sees (one machine, or a shared file system).
"""

from __future__ import annotations

import pickle
from typing import Any

from b2s_core import ray_engine
from b2s_core.errors import B2SError
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.progress import SceneProgress
from converters.readers.base import SceneReader


def check_backend(backend: str, ray_address: str | None) -> None:
    """``--backend`` / ``--ray-address`` of convert and build-binary, checked before the dataset is opened."""
    ray_engine.check_backend(backend, ray_address, ConverterError)


# -- in a Ray worker process --------------------------------------------------------------------------
_READERS: dict[bytes, SceneReader] = {}  # reader_kwargs (pickled) -> the reader this worker opened


def _reader_of(reader_kwargs: dict) -> SceneReader:
    # A Ray worker process runs many tasks, of this run and of later ones: open each dataset once.
    key = pickle.dumps(sorted(reader_kwargs.items(), key=lambda item: item[0]))
    if key not in _READERS:
        _READERS.clear()  # one dataset at a time: a nuScenes trainval table load holds GBs
        _READERS[key] = open_reader(**reader_kwargs)
    return _READERS[key]


def _run_scene(task: Any, scene: str) -> tuple[str, int, list]:
    count, skipped = task.run(_reader_of(task.reader_kwargs), scene, None)
    return scene, count, skipped


def _scene_task(task: Any, scene: str) -> tuple[str, int, list] | B2SError:
    """One scene in a Ray worker -> (scene, frames written, frames skipped), or the error that stops the run."""
    return ray_engine.errors_as_values(_run_scene, task, scene)


# -- in the driver --------------------------------------------------------------------------------
def run_scenes_ray(task: Any, reader: SceneReader, todo: list[str], *, workers: int, address: str | None,
                   progress: SceneProgress) -> tuple[int, list]:
    """Run ``task`` over the scenes ``todo`` as Ray tasks; returns (frames written, frames skipped).

    ``address``: a running Ray cluster to join; without it a local Ray instance with ``workers``
    CPUs is started here (:func:`b2s_core.ray_engine.ray_session`).
    """
    if not todo:
        return 0, []
    with ray_engine.ray_session(address, num_cpus=workers, error=ConverterError) as ray:
        remote = ray_engine.task(ray, _scene_task)
        task_ref = ray.put(task)  # shipped to the object store once, not once per scene
        # Longest first; sorted() is stable, so scenes of equal length keep the dataset's order.
        order = sorted(todo, key=lambda scene: -reader.scene_length(scene))
        totals = {"frames": 0, "skipped": []}

        def finished(result: tuple[str, int, list]) -> None:
            scene, count, bad = result
            totals["frames"] += count
            totals["skipped"] += bad
            progress.scene_done(scene, count, len(bad))

        ray_engine.run_tasks(ray, {remote.remote(task_ref, scene): scene for scene in order}, finished, ConverterError)
    return totals["frames"], totals["skipped"]


__all__ = ["check_backend", "run_scenes_ray"]
