"""Checks of option values shared by the commands: a number out of its range, or two options that
contradict each other, end the command with one line naming the option before any file is touched.

Errors are :class:`OptionValueError` (a B2SError: ``error: ...``, exit 1, like every other refusal
of the commands), so that a value checked here and one checked by the library read the same.

Options with a fixed set of values are typed with :func:`choices` instead: Typer lists the values in
``--help`` and refuses any other as a usage error (exit 2) before the command starts.

Nothing here imports torch: ``b2s info`` and ``b2s --help`` load this module and must start fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Annotated, Optional

import typer

from b2s_core.errors import B2SError
from b2s_core.grids import GRID_PRESETS, GridError, get_grid
from b2s_core.ray_engine import BACKENDS
from b2s_core.train.config import DEVICES


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


def grid_list(values: list[str] | None) -> list[str]:
    """A repeatable ``--grid`` (typer callback) -> one spec per grid, by one rule: a value that holds ':' is
    one custom grid ``xmin,ymin,zmin,xmax,ymax,zmax:voxel`` (its commas separate numbers); any other value
    is a comma-separated list of preset names. A value that joins a custom grid to presets or to a second
    custom grid is a usage error (exit 2) naming the value; the grids themselves are checked by
    :func:`check_grids`."""
    specs: list[str] = []
    for value in values or []:
        if ":" not in value:
            specs += split_list(value)
            continue
        items = {item.strip() for item in re.split("[,:]", value)}
        if value.count(":") > 1 or items & set(GRID_PRESETS):
            raise typer.BadParameter(f"'{value}' mixes a custom grid with other grids; give each custom grid "
                                     "its own --grid (presets may share one: occ3d,openscene)")
        specs.append(value.strip())
    return specs


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


def source_callback(value: str) -> str:
    """``--source`` (typer callback): a built-in source, an installed ``b2s.readers`` name or
    ``package.module:Class`` -> its source id (:func:`converters.readers.plugins.resolve_source`).

    A value that names no reader is a usage error like a bad choice (exit 2), in one line that lists
    the built-in and installed names; a plug-in that cannot be loaded is named with its problem.
    """
    from converters.errors import ConverterError
    from converters.readers.plugins import resolve_source

    try:
        return resolve_source(value)
    except ConverterError as err:
        raise typer.BadParameter(str(err)) from None


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """The values of a choice option as a str Enum (member name = value): Typer lists them in --help and
    refuses others with exit 2. The command passes ``option.value`` (a plain str) on to the library."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


def value_of(choice: Enum | None) -> str | None:
    """A choice option's value as the library takes it (None: not given)."""
    return None if choice is None else choice.value


# --device of every command that runs a model or marches rays (evaluate, autolabel, pretrain, finetune).
Device = choices("Device", DEVICES)
DEVICE_HELP = "auto (cuda when available, else cpu), cpu or cuda."

# --mask of evaluate, align and visualize: which of the ground truth's visibility masks limits the voxels.
# The same values as b2s_core.metrics.protocols.MASKS, written out here because that module imports torch
# (tests/test_cli_consistency.py checks they agree).
Mask = choices("Mask", ("camera", "lidar", "none"))

# --on-error of convert and build-binary (converters.jobs.scene_run.check_run_options).
OnError = choices("OnError", ("skip", "stop"))

# --backend and --ray-address of convert, build-binary and autolabel (b2s_core.ray_engine).
Backend = choices("Backend", BACKENDS)
RAY_ADDRESS_HELP = "Ray cluster to join with --backend ray (e.g. auto, or HOST:6379)."
# Declared once for every command that takes them (convert, build-binary, autolabel).
RayAddressOption = Annotated[Optional[str], typer.Option("--ray-address", help=RAY_ADDRESS_HELP)]
# convert and build-binary run scenes on --workers local processes or as Ray tasks.
SceneBackendOption = Annotated[Backend, typer.Option(
    "--backend", help="local: --workers processes on this machine; ray: one Ray task per scene "
                      "(local Ray instance of --workers CPUs, or --ray-address; needs the ray extra).")]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is refused.

    The rule of training's ``device: auto`` (b2s_core.train.loop.setup_distributed), for the commands
    that hand a concrete torch device to the library."""
    import torch  # here, not at the top: only commands that run a model pay for importing torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionValueError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    return device


def comma_choices(allowed: Iterable[str]) -> Callable[[str], str]:
    """A Typer callback for a comma-separated list option (``--format nuscenes,occ3d``): an unknown or
    empty item is a usage error (exit 2) that lists the allowed values."""
    allowed = tuple(allowed)

    def check(text: str) -> str:
        items = split_list(text)
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            problem = f"unknown '{unknown[0]}'" if unknown else "nothing given"
            raise typer.BadParameter(f"{problem}: give a comma-separated list of {', '.join(allowed)}")
        return text

    return check


def split_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: the items of a comma-separated option (--scenes, --format)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]
