"""Checks of option values shared by the commands: a number out of its range, or two options that
contradict each other, end the command with one line naming the option before any file is touched.

Errors are :class:`OptionValueError` (a B2SError: ``error: ...``, exit 1, like every other refusal
of the commands), so that a value checked here and one checked by the library read the same.
"""

from __future__ import annotations

import math

from b2s_core.errors import B2SError
from b2s_core.grids import GridError, get_grid


class OptionValueError(B2SError):
    """An option value out of its range, or options that cannot be given together."""


def check_number(option: str, value: float | int | None, *, at_least: float | None = None,
                 above: float | None = None, at_most: float | None = None) -> None:
    """Refuse NaN / infinity and values outside ``[at_least | (above, at_most]``; ``None`` (not given) passes."""
    if value is None:
        return
    if not math.isfinite(value):
        raise OptionValueError(f"{option} must be a finite number, got {value}")
    if at_least is not None and value < at_least:
        raise OptionValueError(f"{option} must be at least {at_least:g}, got {value:g}")
    if above is not None and value <= above:
        raise OptionValueError(f"{option} must be greater than {above:g}, got {value:g}")
    if at_most is not None and value > at_most:
        raise OptionValueError(f"{option} must be at most {at_most:g}, got {value:g}")


def refuse_together(first: str, first_given: object, second: str, second_given: object, why: str) -> None:
    """Two options that contradict each other (one would be silently ignored): give one of them."""
    if first_given and second_given:
        raise OptionValueError(f"{first} and {second} cannot be given together: {why}")


def check_grids(option: str, specs: list[str] | str | None) -> None:
    """Each grid spec (a preset or ``xmin,ymin,zmin,xmax,ymax,zmax:voxel``) must make a grid: finite
    numbers, positive voxel sizes, a non-empty range."""
    for spec in [specs] if isinstance(specs, str) else specs or []:
        try:
            get_grid(spec)
        except GridError as err:
            raise OptionValueError(f"{option}: {err}") from None


def parse_auto_float(option: str, text: str | None) -> float | None:
    """``'auto'`` (or not given) -> None; else a finite number greater than 0."""
    if text is None or text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise OptionValueError(f"{option} must be a number of pixels or 'auto', got '{text}'") from None
    check_number(option, value, above=0)
    return value
