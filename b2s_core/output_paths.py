"""Where a command may write: outputs never destroy inputs or existing files, one run per output.

Every command that writes goes through :func:`claim_outputs` with its outputs and inputs:

    with claim_outputs([Output(out)], {"--data": data, "--checkpoint": checkpoint}, overwrite=overwrite):
        ...write out...

The rules (docs/format.md, "Outputs"), checked before any work is done:

1. An output is never an input: not the same file after resolving links (``--out`` equal to
   ``--data``), not a folder the command writes into over an input, not the ``<out>.parts/``
   folder a resumable run deletes when it finishes. ``--overwrite`` does not lift this.
2. Two outputs of one command are never the same file (``--out`` equal to ``--predictions-out``).
3. A file output must not be a folder, a folder output must not be a file.
4. An existing output is refused unless ``overwrite`` or the command's documented resume applies
   (``resuming``). Resumable file outputs (``<out>.parts/``) need no flag: the parts are not the
   output, so an interrupted run resumes while ``<out>`` itself is still absent.
5. One run per output: ``<out>.lock`` holds the pid (and host) of the run writing ``<out>``; a
   second run is refused, a lock whose process is gone (on this host) is taken over.

The writers themselves stay atomic (temp file + rename, see ``b2s_core.occfile``), so a refused
or interrupted run leaves every existing file as it was.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from b2s_core.errors import B2SError

PathLike = str | os.PathLike
InputPaths = Mapping[str, PathLike | Sequence[PathLike] | None]  # option name -> path(s) or None

# A lock without a readable pid may be one being written this instant; older than this, it is debris.
_UNREADABLE_LOCK_GRACE_S = 10.0


class OutputPathError(B2SError):
    """An output that would destroy an input or an existing file."""


class OutputInUseError(OutputPathError):
    """Another b2s run is writing the same output."""


@dataclass(frozen=True)
class Output:
    """One thing a command writes.

    A file output has ``members=None``. A folder output names what it writes inside as glob
    patterns (``("*",)``: anything; a training run: ``("checkpoint.pt", "metrics.jsonl", ...)``),
    so that an existing folder counts as "existing output" only where the run would replace files.
    """

    path: Path
    option: str = "--out"
    members: tuple[str, ...] | None = None
    parts: bool = False  # resumes from <path>.parts/, which the finished run deletes
    resuming: bool = False  # existing content is what the command continues (pretrain --resume)
    exists_hint: str = "pass --overwrite to replace it"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def is_folder(self) -> bool:
        return self.members is not None

    @property
    def parts_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".parts")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def existing_members(self) -> list[Path]:
        """Files the output would replace that are already there (for a file output: itself)."""
        if not self.is_folder:
            return [self.path] if self.path.exists() else []
        if not self.path.is_dir():
            return []
        found = {p for pattern in self.members for p in self.path.glob(pattern)}
        found.discard(self.lock_path)
        return sorted(found)

    def would_write(self, path: Path) -> bool:
        """Whether ``path`` (resolved) is, or lies among, what this output writes or deletes."""
        target = _resolved(self.path)
        if self.parts and _inside(path, _resolved(self.parts_dir)):
            return True
        if not self.is_folder:
            return _same(path, target)
        if _same(path, target):
            return True
        return _resolved(path.parent) == target and any(fnmatch.fnmatch(path.name, m) for m in self.members)


# -- checks ---------------------------------------------------------------------------------------
def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    """Same file: same resolved path, or (both existing) the same inode, e.g. a hard link."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    resolved = _resolved(path)
    return resolved == folder or folder in resolved.parents


def _input_items(inputs: InputPaths) -> Iterator[tuple[str, Path]]:
    for option, value in inputs.items():
        if value is None:
            continue
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        for item in values:
            if item is not None and str(item) != "":
                yield option, Path(item)


def check_apart(outputs: Sequence[Output], inputs: InputPaths) -> None:
    """Rules 1-3: no output is an input, no two outputs collide, files are files and folders folders."""
    for output in outputs:
        if output.is_folder and output.path.exists() and not output.path.is_dir():
            raise OutputPathError(f"{output.path}: is a file; {output.option} must be a folder")
        if not output.is_folder and output.path.is_dir():
            raise OutputPathError(f"{output.path}: is a folder; {output.option} must be a file path")
        for option, path in _input_items(inputs):
            if output.would_write(path):
                if not output.is_folder and _same(path, output.path):
                    raise OutputPathError(f"{path}: {output.option} is the same file as {option}; "
                                          "write the output somewhere else")
                if output.parts and _inside(path, _resolved(output.parts_dir)):
                    raise OutputPathError(f"{path}: {option} lies inside {output.parts_dir}, which {output.option} "
                                          "deletes when it finishes; move it or choose another output")
                raise OutputPathError(f"{path}: {output.option} {output.path} would overwrite {option}; "
                                      "choose another output folder")
    for i, first in enumerate(outputs):
        for second in outputs[i + 1:]:
            if _same(first.path, second.path):
                raise OutputPathError(f"{first.path}: {first.option} and {second.option} are the same path; "
                                      "give each output its own")


def check_not_existing(outputs: Sequence[Output], *, overwrite: bool) -> None:
    """Rule 4: an existing output is refused unless overwrite, or the command resumes it."""
    if overwrite:
        return
    for output in outputs:
        if output.resuming:
            continue
        existing = output.existing_members()
        if not existing:
            continue
        if not output.is_folder:
            raise OutputPathError(f"{output.path}: output exists; {output.exists_hint}")
        names = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        held = f"folder is not empty ({names})" if output.members == ("*",) else f"already holds {names}"
        raise OutputPathError(f"{output.path}: {held}; {output.exists_hint}")


# -- atomic writes ---------------------------------------------------------------------------------
def temp_path_for(target: Path) -> Path:
    """``.<name>.tmp-<pid>-<8 hex>`` beside ``target``: hidden, unique, and naming its writer's pid so
    that a later run can tell a dead writer's leftover (``b2s_core.occfile``) from a live one's."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it when the block succeeds.

    ``with atomic_path(out) as temp: temp.write_text(...)``. On any failure the temporary file is
    removed and ``path`` keeps what it held; a failed write (disk full, read-only, I/O error)
    raises ``OSError(errno, problem, path)``, naming the file the user asked for, not the temporary one.
    """
    path = Path(path)
    temp = temp_path_for(path)
    try:
        yield temp
        os.replace(temp, path)
    except OSError as err:
        _remove_quietly(temp)
        if err.errno and (err.filename is None or str(err.filename) == str(temp)):
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
        raise
    except BaseException:
        _remove_quietly(temp)
        raise


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # e.g. the folder turned read-only: the error being raised says what matters


# -- the lock -------------------------------------------------------------------------------------
def process_alive(pid: int) -> bool:
    """Whether a process of this host has ``pid`` (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read_lock(lock: Path) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; pid None when unreadable."""
    try:
        fields = lock.read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None, ""


def _holder(lock: Path) -> str | None:
    """Who holds ``lock`` ("pid N" / "pid N on HOST"), or None when the lock is stale."""
    pid, host = _read_lock(lock)
    if pid is None:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return None
        return "an unknown process" if age < _UNREADABLE_LOCK_GRACE_S else None
    if host and host != socket.gethostname():
        return f"pid {pid} on {host}"  # we cannot see that host's processes: assume it is running
    # Our own pid can only be a lock this process left behind (a crashed in-process call), not another run.
    return f"pid {pid}" if process_alive(pid) and pid != os.getpid() else None


def acquire_lock(output: Output) -> Path:
    """Create ``<out>.lock`` (O_CREAT | O_EXCL) holding our pid and host, taking over a stale one."""
    lock = output.lock_path
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                raise OutputInUseError(f"{output.path}: in use by {holder} (another b2s run); wait for it or "
                                       f"delete {lock} if that run is gone") from None
            # Stale: its process is gone. Two runs taking over at once are a race we accept; the
            # loser sees the winner's live pid on its next try.
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {socket.gethostname()}\n")
        return lock
    raise OutputInUseError(f"{output.path}: could not take {lock} (other runs keep taking it); try again")


def release_lock(lock: Path) -> None:
    """Remove our lock, unless another run has taken it over meanwhile."""
    pid, _ = _read_lock(lock)
    if pid == os.getpid():
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def claim_outputs(outputs: Iterable[Output], inputs: InputPaths | None = None, *, overwrite: bool = False) -> Iterator[None]:
    """Check every rule, hold the outputs' locks while the block runs, release them on exit."""
    outputs = list(outputs)
    check_apart(outputs, inputs or {})
    locks: list[Path] = []
    try:
        for output in outputs:
            locks.append(acquire_lock(output))
        # Checked under the lock: a run that finished a moment ago has left its output by now.
        check_not_existing(outputs, overwrite=overwrite)
        yield
    finally:
        for lock in locks:
            release_lock(lock)


__all__ = ["Output", "OutputInUseError", "OutputPathError", "acquire_lock", "atomic_path", "check_apart",
           "check_not_existing", "claim_outputs", "process_alive", "release_lock", "temp_path_for"]
