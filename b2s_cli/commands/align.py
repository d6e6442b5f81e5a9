"""``b2s align``: the vertical offset between built binary occupancy and a label set, from frames both hold."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from b2s_cli.errors import cli_errors
from b2s_cli.options import Mask, check_number
from b2s_core.binary.convention import estimate_offset
from b2s_core.occfile import OccDataset

_console = Console(highlight=False)


@cli_errors
def align(
    binary: Path = typer.Option(..., "--binary",
                                help="Occupancy built by b2s build-binary (its own --z-offset, read from the file, "
                                     "is taken into account)."),
    labels: Path = typer.Option(..., "--labels", help="Labels converted by b2s convert, on the same grid, sharing frame tokens."),
    max_shift: int = typer.Option(4, "--max-shift", help="Shifts tried: -N .. N layers."),
    mask: Mask = typer.Option("camera", "--mask",
                              help="Score inside the labels' mask_camera ('camera'), mask_lidar ('lidar') or "
                                   "everywhere ('none')."),
) -> None:
    """Estimate the vertical offset of a label set: IoU of built vs label occupancy per layer shift, on shared frames.

    Shift s compares built layer k with label layer k + s; the best shift times the voxel height, plus the offset --binary was built with, is the --z-offset to give b2s build-binary.

    Example: b2s align --binary binary.h5 --labels occ3d.h5
    """  # noqa: E501  # Typer's --help keeps a docstring's line breaks: each help paragraph stays one line
    check_number("--max-shift", max_shift, at_least=0)
    built_data = OccDataset(binary)
    try:
        label_data = OccDataset(labels)
        try:
            estimate = estimate_offset(built_data, label_data, max_shift=max_shift, mask=mask.value)
        finally:
            label_data.close()
    finally:
        built_data.close()
    table = Table(title=f"built vs labels on {estimate.frames} shared frames (mask: {mask.value})", title_justify="left")
    for column in ("shift (layers)", "metres", "IoU", "intersection", "union"):
        table.add_column(column, justify="right")
    for score in estimate.scores:
        style = "bold" if score is estimate.best else None
        table.add_row(f"{score.shift:+d}", f"{score.shift * estimate.voxel_height:+.2f}", f"{score.iou:.3f}",
                      f"{score.intersection:,}", f"{score.union:,}", style=style)
    _console.print(table)
    if estimate.built_offset:
        _console.print(f"--binary was built with --z-offset {estimate.built_offset:g}")
    _console.print(f"best shift {estimate.best.shift:+d} layers (IoU {estimate.best.iou:.3f}): "
                   f"build with --z-offset {estimate.z_offset:g} to match the labels")
