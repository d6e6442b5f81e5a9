"""Names and relative paths that come from outside b2s (options, dataset tables, file attributes)
and become paths under a folder.

The rule, in one place: such a path stays inside the folder it is documented to be relative to.
It is normalised lexically (``a/./b`` and ``a/../b`` read as ``a/b`` and ``b``) and refused when it
is empty, absolute, holds a NUL byte or climbs above its root. Symbolic links are *not* resolved:
datasets are often assembled from links (``samples -> /big/disk/samples``), and a link inside the
root is the user's own setup. The normalised path is what gets opened, so the operating system
never walks a ``..`` through such a link either.

The functions return a problem (a phrase to put after the offending value) or None, so that each
caller raises its own error type (ConverterError in the converters, SynthError in ``b2s synth``).
"""

from __future__ import annotations

import posixpath
from pathlib import Path


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one file or folder name (a version folder, a split, a scene), or None."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if name in (".", ".."):
        return "is not a name"
    if "/" in name or "\\" in name:
        return "holds a path separator"
    if "\0" in name:
        return "holds a NUL byte"
    return None


def relative_path_problem(relative: object) -> str | None:
    """Why ``relative`` cannot be a path inside its root folder, or None when it can."""
    if not isinstance(relative, str) or not relative:
        return "is empty"
    if "\0" in relative:
        return "holds a NUL byte"
    if posixpath.isabs(relative):
        return "is absolute"
    normal = posixpath.normpath(relative)
    if normal == ".":
        return "names no file"
    if normal == ".." or normal.startswith("../"):
        return "leads outside its root folder"
    return None


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` normalised lexically; call only when ``relative_path_problem`` is None."""
    return Path(root) / posixpath.normpath(relative)
