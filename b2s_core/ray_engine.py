"""What every ``--backend ray`` run shares, whatever its tasks do (convert / build-binary in
:mod:`converters.jobs.ray_backend`, autolabel in :mod:`b2s_core.apps.autolabel`).

* :func:`import_ray`: ``ray`` is an optional extra (``pip install 'b2s[ray]'``), imported only when
  the backend is used; without it, one line naming the extra.
* :func:`ray_session`: join the cluster at ``--ray-address``, or start a local Ray instance for the
  run and stop it at the end (a process that already called ``ray.init`` keeps its own).
* :func:`task`: a function as a Ray task re-run up to :data:`MAX_RETRIES` times when its worker
  process dies (killed, out of memory, node lost), never when it raises: an exception (a bug, bad
  input) would only fail again.
* :func:`run_tasks`: results in the order the tasks finish; a :class:`B2SError` a task returned (see
  :func:`errors_as_values`) is raised here as its one line, and an error or Ctrl-C cancels the
  tasks still running.

This module imports neither torch nor ``ray`` at import time: the CLI reads :data:`BACKENDS` from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from b2s_core.errors import B2SError

BACKENDS = ("local", "ray")
MAX_RETRIES = 3  # re-runs of a task whose worker process died; a fourth death stops the run
RAY_MISSING = "Ray is not installed; install the ray extra: pip install 'b2s[ray]'"


def _plain_error(where: str, problem: str) -> B2SError:
    return B2SError(f"{where}: {problem}")


def import_ray(error: Callable[[str, str], Exception] = _plain_error):
    """The ``ray`` module, or ``error("--backend ray", RAY_MISSING)`` raised (the caller's error class)."""
    try:
        import ray
    except ImportError:
        raise error("--backend ray", RAY_MISSING) from None
    return ray


def check_backend(backend: str, ray_address: str | None,
                  error: Callable[[str, str], Exception] = _plain_error) -> None:
    """``--backend`` / ``--ray-address`` of every command that takes them, checked before any work:
    a known backend, an address only with Ray, and Ray installed when it is asked for."""
    if backend not in BACKENDS:
        raise error(backend, f"--backend must be one of {', '.join(BACKENDS)}")
    if ray_address and backend != "ray":
        raise error(ray_address, "--ray-address joins a Ray cluster; it needs --backend ray")
    if backend == "ray":
        import_ray(error)


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None,
                error: Callable[[str, str], Exception] = _plain_error) -> Iterator[Any]:
    """The ``ray`` module with a Ray instance up for the block.

    ``address``: a running cluster to join (``ray start --head`` prints it; ``auto`` finds the
    local one). Without it, and unless this process already called ``ray.init``, a local instance
    of ``num_cpus`` CPUs (None: every core; GPUs are detected) is started and stopped at the end.
    """
    ray = import_ray(error)
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def task(ray, function: Callable, *, num_cpus: float = 1, num_gpus: float = 0):
    """``function`` as a Ray remote function taking ``num_cpus`` / ``num_gpus`` per call.

    max_retries re-runs a call whose worker died; retry_exceptions=False: an exception the call
    raises is not retried.
    """
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=MAX_RETRIES, retry_exceptions=False)(function)


def errors_as_values(function: Callable, *args: Any) -> Any:
    """``function(*args)`` in a Ray worker, a :class:`B2SError` returned instead of raised.

    Raised, Ray would wrap it in its own error class with the worker's traceback, and the user is
    owed the one-line message; :func:`run_tasks` raises it in the driver.
    """
    try:
        return function(*args)
    except B2SError as err:
        return err


def run_tasks(ray, names: dict, on_result: Callable[[Any], None],
              error: Callable[[str, str], Exception] = _plain_error) -> None:
    """Wait for the Ray tasks ``names`` (object ref -> what the task works on, for messages) and pass
    each result to ``on_result`` as it finishes.

    A result that is a :class:`B2SError` is raised; a task whose worker died more often than
    :data:`MAX_RETRIES` allows ends in ``error(name, ...)``; an unexpected exception in a task (a
    bug) is raised whole. Leaving early (an error, Ctrl-C, SIGTERM) cancels the tasks still running.
    """
    pending = list(names)
    try:
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(finished[0])
            except ray.exceptions.RayTaskError as failed:
                cause = getattr(failed, "cause", None)
                raise cause if isinstance(cause, Exception) else failed from None
            except ray.exceptions.RayError as failed:
                raise error(names[finished[0]], f"Ray lost the worker {MAX_RETRIES + 1} times "
                                                f"({type(failed).__name__}); rerun to resume") from None
            if isinstance(result, B2SError):
                raise result
            on_result(result)
    finally:
        # force=True kills the workers of the tasks still running; what they were writing stays a
        # temporary file, cleared by the next run.
        for ref in pending:
            ray.cancel(ref, force=True)


__all__ = ["BACKENDS", "MAX_RETRIES", "RAY_MISSING", "check_backend", "errors_as_values", "import_ray", "ray_session", "run_tasks", "task"]
