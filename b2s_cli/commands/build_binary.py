"""``b2s build-binary``: binary occupancy ground truth with visibility masks from raw LiDAR logs."""

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
    choices,
    parse_auto_float,
    refuse_together,
    source_callback,
)
from b2s_cli.scene_progress import RichSceneProgress, print_skipped, scene_progress_bars
from b2s_core.binary.convention import LABEL_CONVENTIONS
from b2s_core.output_paths import Output, claim_outputs
from converters.jobs.build_binary import BuildBinaryJob, BuildBinarySummary
from converters.jobs.build_binary import build_binary as run_build
from converters.jobs.scene_run import parse_shard
from converters.readers.plugins import source_choices

_console = Console(highlight=False)
LabelConvention = choices("LabelConvention", LABEL_CONVENTIONS)


def _print_summary(summary: BuildBinarySummary) -> None:
    per_frame = summary.seconds / summary.frames if summary.frames else 0.0
    # Two short lines, numbers first and the path last: rich wraps at any space, so a long path used to
    # push the wrap between a number and its unit ("built in 4.3 \n s"); now only the path can wrap.
    _console.print(f"wrote {summary.scenes} scenes ({summary.resumed} resumed) to {escape(str(summary.out))}")
    _console.print(f"{summary.frames} key frames built in {summary.seconds:.1f} s ({per_frame:.2f} s per key frame)")
    print_skipped(_console, summary.skipped)


@cli_errors
def build_binary(
    source: str = typer.Option(..., "--source", callback=source_callback, help=f"Dataset reader: {source_choices()} "
                               "(a reader of your own: docs/converters.md, 'Your own dataset')."),
    dataroot: Path = typer.Option(..., "--dataroot", help="Root folder of the dataset as downloaded."),
    out: Path = typer.Option(..., "--out", help="Output HDF5 file (unified format, no semantics)."),
    version: Optional[str] = typer.Option(None, "--version", help="nuScenes table folder, e.g. v1.0-mini, v1.0-trainval."),
    grid: Optional[str] = typer.Option(None, "--grid",
                                       help="occ3d, openoccupancy, openscene or xmin,ymin,zmin,xmax,ymax,zmax:voxel "
                                            "(default: the source's usual grid)."),
    sweeps: int = typer.Option(0, "--sweeps", help="Static aggregation window in sweeps centred on each key frame; 0 = the whole scene."),
    ray_sweeps: int = typer.Option(10, "--ray-sweeps", help="Sweeps whose rays make mask_lidar: the key sweep and those just before it."),
    camera_stride: str = typer.Option("auto", "--camera-stride",
                                      help="Pixels between camera rays (a number > 0), or 'auto': "
                                           "rays one voxel apart at the grid edge."),
    exact_rays: bool = typer.Option(False, "--exact-rays",
                                    help="Trace every LiDAR point (default: one ray per sweep and end voxel, "
                                         "~3x faster)."),
    points: bool = typer.Option(False, "--points/--no-points", help="Keep the key-frame LiDAR points in the file."),
    label_convention: LabelConvention = typer.Option("none", "--label-convention",
                                                     help="Vertical convention of the labels to pair with: "
                                                          "'none' (the ego frame as the grid states it) or 'occ3d' "
                                                          "(--z-offset -0.8: Occ3D puts the ground in layer 0)."),
    z_offset: Optional[float] = typer.Option(None, "--z-offset",
                                             help="Metres, label z = ego z + offset: what stands at ego z goes to the "
                                                  "layer of z + offset (b2s align estimates it)."),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Comma-separated scene names to build (default: all)."),
    split: Optional[str] = typer.Option(None, "--split",
                                        help="Official split (nuScenes: train, val, mini_train, ...; nuPlan/OpenScene: "
                                             "split folder)."),
    workers: int = typer.Option(1, "--workers", help="Processes building scenes in parallel."),
    backend: SceneBackendOption = "local",
    ray_address: RayAddressOption = None,
    shard: Optional[str] = typer.Option(None, "--shard",
                                        help="i/N: build shard i of N, shards of equal total frames (cluster array "
                                             "jobs); auto: from SLURM_ARRAY_TASK_ID/COUNT."),
    on_error: OnError = typer.Option("skip", "--on-error", help="A frame the reader cannot read: 'skip' it (listed at the end) or 'stop'."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace --out if it exists (an interrupted run resumes from <out>.parts/ "
                                        "without it)."),
) -> None:
    """Build binary occupancy with LiDAR and camera visibility masks from raw LiDAR logs and boxes (resumable).

    Example: b2s build-binary --source nuscenes --dataroot data/nuscenes --version v1.0-mini --grid occ3d --out binary.h5 --workers 4
    """
    check_number("--sweeps", sweeps, at_least=0)
    check_number("--ray-sweeps", ray_sweeps, at_least=1)
    check_number("--workers", workers, at_least=1)
    check_grids("--grid", grid)
    refuse_together("--scenes", scenes, "--split", split, "--scenes names the scenes to build, --split selects them by split")
    check_number("--z-offset", z_offset)
    refuse_together("--label-convention", label_convention.value != "none", "--z-offset", z_offset is not None,
                    "a label convention is a named --z-offset")
    offset = z_offset if z_offset is not None else LABEL_CONVENTIONS[label_convention.value].z_offset
    job = BuildBinaryJob(
        source=source, dataroot=dataroot, out=out, version=version,
        scenes=[s.strip() for s in scenes.split(",") if s.strip()] if scenes else None, split=split, grid=grid,
        sweeps=sweeps, ray_sweeps=ray_sweeps, camera_stride=parse_auto_float("--camera-stride", camera_stride),
        exact_rays=exact_rays, keep_points=points, z_offset=offset, workers=workers, backend=backend.value,
        ray_address=ray_address, shard=parse_shard(shard), on_error=on_error.value, overwrite=overwrite,
        command=shlex.join(["b2s", *sys.argv[1:]]),
    )
    with claim_outputs([Output(out, parts=True)], {"--dataroot": dataroot}, overwrite=overwrite), \
            scene_progress_bars(_console) as progress:
        summary = run_build(job, RichSceneProgress(progress, done="built", frames="key frames"))
    _print_summary(summary)
