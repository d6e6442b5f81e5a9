"""``b2s convert``: a raw dataset (nuScenes, nuPlan, OpenScene) -> the unified HDF5 format."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from b2s_cli.errors import cli_errors
from b2s_cli.options import (
    OnError,
    RayAddressOption,
    SceneBackendOption,
    check_grids,
    check_number,
    refuse_together,
    source_callback,
)
from b2s_cli.scene_progress import RichSceneProgress, print_skipped, scene_progress_bars
from b2s_core.output_paths import Output, claim_outputs
from converters.jobs.convert import ConvertConfig, ConvertSummary
from converters.jobs.convert import convert as run_convert
from converters.jobs.scene_run import parse_shard
from converters.readers.plugins import source_choices

_console = Console(highlight=False)


def _print_summary(summary: ConvertSummary) -> None:
    per_frame = summary.seconds / summary.frames if summary.frames else 0.0
    # As build-binary's: two short lines, numbers first and the path last, so that rich, which wraps at
    # any space, can only wrap inside the path, never between a number and its unit.
    _console.print(f"wrote {summary.scenes} scenes ({summary.resumed} resumed) to {escape(str(summary.out))}")
    _console.print(f"{summary.frames} frames converted in {summary.seconds:.1f} s ({per_frame:.2f} s per frame)")
    print_skipped(_console, summary.skipped)


@cli_errors
def convert(
    source: str = typer.Option(..., "--source", callback=source_callback, help=f"Dataset reader: {source_choices()} "
                               "(a reader of your own: docs/converters.md, 'Your own dataset')."),
    dataroot: Path = typer.Option(..., "--dataroot", help="Root folder of the dataset as downloaded."),
    out: Path = typer.Option(..., "--out", help="Output HDF5 file (unified format)."),
    version: Optional[str] = typer.Option(None, "--version", help="nuScenes table folder, e.g. v1.0-mini, v1.0-trainval, v1.0-test."),
    labels: Optional[str] = typer.Option(None, "--labels",
                                         help="Semantic labels as KIND:PATH, KIND one of occ3d, "
                                              "openoccupancy (nuScenes), openscene."),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Comma-separated scene names to convert (default: all)."),
    split: Optional[str] = typer.Option(None, "--split",
                                        help="Official split (nuScenes: train, val, test, mini_train, mini_val; "
                                             "nuPlan/OpenScene: split folder)."),
    workers: int = typer.Option(1, "--workers", help="Processes converting scenes in parallel."),
    backend: SceneBackendOption = "local",
    ray_address: RayAddressOption = None,
    shard: Optional[str] = typer.Option(None, "--shard",
                                        help="i/N: convert shard i of N, shards of equal total frames (cluster array "
                                             "jobs); auto: from SLURM_ARRAY_TASK_ID/COUNT."),
    embed_images: bool = typer.Option(False, "--embed-images",
                                      help="Copy the camera images into the file (else store paths under the dataset "
                                           "root)."),
    on_error: OnError = typer.Option("skip", "--on-error", help="A frame with bad input: 'skip' it (listed at the end) or 'stop' the run."),
    grid: Optional[str] = typer.Option(None, "--grid",
                                       help="Grid of an unlabelled conversion (labels fix their own): occ3d, "
                                            "openoccupancy, openscene or a custom spec."),
    points: bool = typer.Option(True, "--points/--no-points", help="Keep the key-frame LiDAR points in the file."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace --out if it exists (an interrupted run resumes from <out>.parts/ "
                                        "without it)."),
) -> None:
    """Convert a raw dataset into the unified HDF5 format, scene by scene (resumable).

    Example: b2s convert --source nuscenes --dataroot data/nuscenes --version v1.0-mini --labels occ3d:data/occ3d --out mini.h5
    """
    check_number("--workers", workers, at_least=1)
    check_grids("--grid", grid)
    refuse_together("--scenes", scenes, "--split", split, "--scenes names the scenes to convert, --split selects them by split")
    config = ConvertConfig(
        source=source, dataroot=dataroot, out=out, version=version, labels=labels,
        scenes=[s.strip() for s in scenes.split(",") if s.strip()] if scenes else None, split=split,
        workers=workers, backend=backend.value, ray_address=ray_address, shard=parse_shard(shard),
        embed_images=embed_images, on_error=on_error.value,
        store_points=points, grid=grid, overwrite=overwrite, command=shlex.join(["b2s", *sys.argv[1:]]),
    )
    inputs = {"--dataroot": dataroot, "--labels": labels.split(":", 1)[-1] if labels else None}  # KIND:PATH
    with claim_outputs([Output(out, parts=True)], inputs, overwrite=overwrite), \
            scene_progress_bars(_console) as progress:
        summary = run_convert(config, RichSceneProgress(progress, done="converted", frames="frames"))
    _print_summary(summary)
