"""Library exceptions -> one line on stderr and exit code 1, in one table.

Set ``B2S_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console

from b2s_core.errors import B2SError

F = TypeVar("F", bound=Callable)
_stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# exception type -> how to introduce it; the exception's own message names the file and problem.
ERROR_TABLE: tuple[tuple[type[BaseException], str], ...] = (
    (B2SError, "error"),
    (FileNotFoundError, "file not found"),
    (PermissionError, "permission denied"),
    (IsADirectoryError, "expected a file, got a directory"),
    (MemoryError, "out of memory"),
)


def one_line(err: BaseException) -> str:
    text = str(err).strip().replace("\n", " ")
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text or type(err).__name__


def cli_errors(func: F) -> F:
    """Wrap a command: known errors become ``error: <message>`` and exit 1, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except ERROR_TABLE_TYPES as err:
            if os.environ.get("B2S_DEBUG"):
                raise
            prefix = next(p for t, p in ERROR_TABLE if isinstance(err, t))
            _stderr.print(f"[bold red]{prefix}:[/] {one_line(err)}", markup=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


ERROR_TABLE_TYPES = tuple(t for t, _ in ERROR_TABLE)
