"""Library exceptions -> one line on stderr and exit code 1, in one table.

Set ``B2S_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from b2s_core.errors import B2SError

F = TypeVar("F", bound=Callable)
_stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# A failed write (or read) of the file system, by errno -> the problem, as "<path>: <problem>" says it.
# Any OSError with one of these errnos is expected (a full disk is the user's to fix), whatever raised it.
OS_PROBLEMS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
}

# exception type -> how to introduce it; the exception's own message names the file and problem.
# OSError last: only those with an errno of OS_PROBLEMS (see _prefix); any other is unexpected.
ERROR_TABLE: tuple[tuple[type[BaseException], str], ...] = (
    (B2SError, "error"),
    (FileNotFoundError, "file not found"),
    (PermissionError, "permission denied"),
    (IsADirectoryError, "expected a file, got a directory"),
    (MemoryError, "out of memory"),
    (OSError, "error"),
)

# h5py's messages name the file inside the text ("..., filename = '/x.h5', ..."), not in .filename.
_H5_FILENAME = re.compile(r"(?:file)?name = '([^']*)'")


def _os_problem(err: BaseException) -> str | None:
    return OS_PROBLEMS.get(err.errno) if isinstance(err, OSError) else None  # type: ignore[arg-type]


def one_line(err: BaseException) -> str:
    problem = _os_problem(err)
    if isinstance(err, OSError) and problem is not None:  # "<path>: no space left on device", whatever the raiser wrote
        named = _H5_FILENAME.search(str(err))
        path = err.filename2 or err.filename or (named.group(1) if named else None)  # a rename names its target
        return f"{path}: {problem}" if path else problem
    text = str(err).strip().replace("\n", " ")
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text or type(err).__name__


def _prefix(err: BaseException) -> str | None:
    """How ERROR_TABLE introduces ``err``; None for an error that is not expected (a bug: traceback)."""
    if _os_problem(err) is not None:
        return "error"
    kind, prefix = next((t, p) for t, p in ERROR_TABLE if isinstance(err, t))
    return None if kind is OSError else prefix  # another OSError (a library's internal failure): a bug


def cli_errors(func: F) -> F:
    """Wrap a command: known errors become ``error: <message>`` and exit 1, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except ERROR_TABLE_TYPES as err:
            prefix = _prefix(err)
            if prefix is None or os.environ.get("B2S_DEBUG"):
                raise
            # The message holds user text (paths, names): printed as text, never read as markup.
            _stderr.print(f"[bold red]{prefix}:[/] {escape(one_line(err))}", markup=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


ERROR_TABLE_TYPES = tuple(t for t, _ in ERROR_TABLE)
