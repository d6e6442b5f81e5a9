"""``b2s export``: a unified file -> the per-frame files other occupancy tools read (Occ3D, SparseOcc / FlashOcc npz, OpenOccupancy)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from b2s_cli.errors import cli_errors
from b2s_core.apps.export import FORMATS, replaced_members
from b2s_core.apps.export import export as run_export
from b2s_core.output_paths import Output, claim_outputs

_console = Console(highlight=False)


# The choices of --format, from the library's list (Typer lists them in --help, exits 2 on others).
ExportFormat = Enum("ExportFormat", {name: name for name in FORMATS}, type=str)


@cli_errors
def export(
    data: Path = typer.Option(..., "--data", help="Unified .h5 file to export: labels, predictions or pseudo-labels.", show_default=False),
    fmt: ExportFormat = typer.Option(..., "--format", help="occ3d: gts/<scene>/<token>/labels.npz; npz: <token>.npz with "
                                     "'pred' (SparseOcc, FlashOcc, RayIoU); openoccupancy: scene_<scene token>/occupancy/"
                                     "<lidar token>.npy rows in the LiDAR frame.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Output folder.", show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace what an earlier export of the same frames wrote in --out (other files "
                                        "stay)."),
) -> None:
    """Export a unified file to the per-frame files other occupancy tools read (docs/evaluation.md).

    Example: b2s export --data occ3d-val.h5 --format occ3d --out occ3d-val/
    Example: b2s export --data pred.h5 --format npz --out pred-npz/
    """
    output = Output(out, members=replaced_members(data, fmt.value))
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with claim_outputs([output], {"--data": data}, overwrite=overwrite), \
            Progress(*columns, console=_console, transient=True) as bar:
        task = bar.add_task(f"exporting {fmt.value}", total=None)
        summary = run_export(data, out, fmt.value, progress=lambda done, total: bar.update(task, completed=done, total=total))
    _console.print(f"wrote {summary.frames} {fmt.value} files under {escape(str(summary.out))} in {summary.seconds:.1f} s")
    if summary.filled_masks:
        _console.print(f"{summary.filled_masks} frames had no mask_lidar / mask_camera: written as all ones (every voxel observed)")
