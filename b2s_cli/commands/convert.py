"""``b2s convert``: a raw dataset (nuScenes, nuPlan, OpenScene) -> the unified HDF5 format."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from b2s_cli.errors import cli_errors
from converters.convert import ConvertConfig, ConvertProgress, ConvertSummary, convert as run_convert, parse_shard

_console = Console(highlight=False)


class _RichProgress(ConvertProgress):
    """Scenes overall, and the frames of the scene being converted (one worker)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.scenes_task = None
        self.frames_task = None

    def start(self, total_scenes: int, resumed: int) -> None:
        if resumed:
            self.progress.console.print(f"resuming: {resumed} of {total_scenes} scenes already converted")
        self.scenes_task = self.progress.add_task("scenes", total=total_scenes, completed=resumed)

    def scene_started(self, scene: str) -> None:
        if self.frames_task is not None:
            self.progress.remove_task(self.frames_task)
        self.frames_task = self.progress.add_task(f"  {scene}", total=None)

    def frame_done(self, scene: str) -> None:
        self.progress.advance(self.frames_task)

    def scene_done(self, scene: str, frames: int, skipped: int) -> None:
        note = f", {skipped} skipped" if skipped else ""
        self.progress.console.print(f"{scene}: {frames} frames{note}")
        self.progress.advance(self.scenes_task)


def _print_summary(summary: ConvertSummary) -> None:
    _console.print(f"wrote {summary.out}: {summary.scenes} scenes ({summary.resumed} resumed), "
                   f"{summary.frames} frames converted in {summary.seconds:.1f} s")
    if not summary.skipped:
        return
    table = Table(title=f"{len(summary.skipped)} skipped frames")
    table.add_column("scene")
    table.add_column("frame token")
    table.add_column("problem", overflow="fold")
    for row in summary.skipped:
        table.add_row(row.scene, row.token, row.problem)
    _console.print(table)


@cli_errors
def convert(
    source: str = typer.Option(..., "--source", help="Dataset kind: nuscenes, nuplan or openscene."),
    dataroot: Path = typer.Option(..., "--dataroot", help="Root folder of the dataset as downloaded."),
    out: Path = typer.Option(..., "--out", help="Output HDF5 file (unified format)."),
    version: Optional[str] = typer.Option(None, "--version", help="nuScenes table folder, e.g. v1.0-mini, v1.0-trainval, v1.0-test."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Semantic labels as KIND:PATH, KIND one of occ3d, openoccupancy (nuScenes), openscene."),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Comma-separated scene names to convert (default: all)."),
    split: Optional[str] = typer.Option(None, "--split", help="Official split (nuScenes: train, val, test, mini_train, mini_val; nuPlan/OpenScene: split folder)."),
    workers: int = typer.Option(1, "--workers", help="Processes converting scenes in parallel."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/N: convert every N-th scene starting at i (cluster array jobs)."),
    embed_images: bool = typer.Option(False, "--embed-images", help="Copy the camera images into the file (else store paths under the dataset root)."),
    on_error: str = typer.Option("skip", "--on-error", help="A frame with bad input: 'skip' it (listed at the end) or 'stop' the run."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Grid of an unlabelled conversion (labels fix their own): occ3d, openoccupancy, openscene or a custom spec."),
    points: bool = typer.Option(True, "--points/--no-points", help="Keep the key-frame LiDAR points in the file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Convert a raw dataset into the unified HDF5 format, scene by scene (resumable).

    Example: b2s convert --source nuscenes --dataroot data/nuscenes --version v1.0-mini --labels occ3d:data/occ3d --out mini.h5
    """
    config = ConvertConfig(
        source=source, dataroot=dataroot, out=out, version=version, labels=labels,
        scenes=[s.strip() for s in scenes.split(",") if s.strip()] if scenes else None, split=split,
        workers=workers, shard=parse_shard(shard), embed_images=embed_images, on_error=on_error,
        store_points=points, grid=grid, overwrite=overwrite, command=shlex.join(["b2s", *sys.argv[1:]]),
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console, transient=False) as progress:
        summary = run_convert(config, _RichProgress(progress))
    _print_summary(summary)
