"""``b2s info``: what is inside unified occupancy files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from b2s_cli.errors import cli_errors, one_line
from b2s_core.apps.summary import summarize
from b2s_core.occfile import check_frames


def _size(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1024 or unit == "GB":
            return f"{num:,.1f} {unit}" if unit != "B" else f"{num:,.0f} B"
        num /= 1024
    return f"{num:.1f} GB"


@cli_errors
def info(
    files: list[Path] = typer.Argument(..., help="One or more .h5 files written by b2s.", show_default=False),
    check: bool = typer.Option(False, "--check", help="Also decode every stored chunk of every frame (reads the whole file); "
                                                      "list each damaged frame and exit 1 if there is one."),
) -> None:
    """Summarise occupancy files: source, grid, taxonomy, scenes, frames, contents and size.

    Example: b2s info data/nuscenes-mini.h5 data/nuplan-*.h5
    Example: b2s info --check data/nuscenes-mini.h5
    """
    console = Console()
    damaged = 0
    for path in files:
        s = summarize(path)
        table = Table(title=escape(str(path)), show_header=False, title_justify="left", box=None, padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        frames = max(s.frames, 1)
        rows = [
            ("source", s.source or "-"),
            ("created by", s.command or "-"),
            ("created", s.created or "-"),
            ("grid", f"{s.grid_name}  {s.grid_shape[0]}x{s.grid_shape[1]}x{s.grid_shape[2]}  voxel {s.voxel_size[0]:g} m"
                     + (f"  z_offset {s.z_offset:+g} m (label z = ego z {s.z_offset:+g})" if s.z_offset else "")),
            ("taxonomy", f"{s.taxonomy} ({s.num_labels} labels)"),
            ("cameras", ", ".join(s.cameras) or "-"),
            ("scenes", f"{s.scenes:,}"),
            ("frames", f"{s.frames:,}"),
            ("with semantics", f"{s.with_semantics:,} ({100 * s.with_semantics / frames:.0f}%)"),
            ("with mask_lidar", f"{s.with_mask_lidar:,} ({100 * s.with_mask_lidar / frames:.0f}%)"),
            ("with mask_camera", f"{s.with_mask_camera:,} ({100 * s.with_mask_camera / frames:.0f}%)"),
            ("with top-2 soft labels", f"{s.with_top2:,}"),
            ("with LiDAR points", f"{s.with_points:,} ({_size(s.point_bytes)})"),
            ("images", f"{s.with_embedded_images:,} frames embedded ({_size(s.image_bytes)}), {s.with_image_paths:,} by path"),
            ("on disk", _size(s.bytes_on_disk)),
            ("bytes per frame", f"{_size(s.bytes_per_frame)} (grids, labels, calibration)"),  # images, points: rows above
            ("file overhead", f"{_size(s.overhead_bytes)} (HDF5 metadata and indexes, once per file)"),
            ("compression", f"{s.compression}, {s.compression_ratio:.1f}x vs uint8 grids"),
        ]
        for key, value in rows:
            table.add_row(key, escape(value))  # the file's own text (command line, names): never markup
        console.print(table)
        if check:
            damaged += _report_damage(path, s.frames)
    if damaged:
        raise typer.Exit(1)


def _report_damage(path: Path, frames: int) -> int:
    """Print one line per damaged frame of ``path`` (stderr) and a verdict; returns how many."""
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    damaged = 0
    for err in check_frames(path):
        errors.print(f"[bold red]damaged:[/] {escape(one_line(err))}", markup=True)
        damaged += 1
    if damaged:
        errors.print(f"{path}: {damaged} of {frames:,} frames damaged", markup=False)
    else:
        Console().print(f"check: all {frames:,} frames decode")
    return damaged
