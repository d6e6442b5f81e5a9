"""``b2s synth``: write a synthetic driving dataset in real formats (nuScenes, Occ3D, nuPlan, ...)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from b2s_cli.errors import cli_errors
from b2s_cli.options import check_grids, check_number, comma_choices, grid_list, split_list
from b2s_core.output_paths import Output, claim_outputs
from b2s_core.synth import FORMATS, SynthError, write_dataset
from b2s_core.synth.contact_sheet import save_contact_sheet


def parse_image_size(text: str) -> tuple[int, int] | None:
    """'WxH' -> (W, H); 'full' -> None (the datasets' real resolution)."""
    if text.lower() == "full":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SynthError(f"image size '{text}' must look like 400x225 (or 'full')") from None
    return width, height


@cli_errors
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (created; must be empty unless --overwrite).", show_default=False),
    scenes: int = typer.Option(2, "--scenes", help="Number of scenes, 1 or more (layouts cycle junction, curve, straight)."),
    frames: int = typer.Option(10, "--frames", help="Key frames per scene, 1 or more (2 Hz; nine 20 Hz LiDAR sweeps between them)."),
    format: str = typer.Option("nuscenes,occ3d", "--format", callback=comma_choices(FORMATS),
                               help=f"Comma-separated formats to write: {', '.join(FORMATS)}."),
    image_size: str = typer.Option("400x225", "--image-size",
                                   help="Camera resolution WxH (nuPlan cameras keep 16:9), "
                                        "or 'full' (1600x900 / 1920x1080)."),
    seed: int = typer.Option(0, "--seed", help="World seed (0 or more); the same seed writes the same bytes."),
    grids: list[str] = typer.Option([], "--grid", callback=grid_list, show_default=False,
                                    help="Extra grids for the exact ground truth, repeatable: each --grid is one "
                                         "custom grid xmin,ymin,zmin,xmax,ymax,zmax:voxel, or presets "
                                         "comma-separated (occ3d,openscene)."),
    nuscenes_version: str = typer.Option("v1.0-mini", "--nuscenes-version", help="Version folder name of the nuScenes tables."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder, replacing files of the same names."),
    preview: bool = typer.Option(True, "--preview/--no-preview",
                                 help="Save preview.png: six cameras and a BEV of the ground truth (needs nuscenes + "
                                      "occ3d)."),
) -> None:
    """Simulate a driving world and write it in real dataset formats, with exact ground truth.

    Example: b2s synth --scenes 2 --frames 10 --out data/synth --format nuscenes,occ3d,nuplan,openscene
    """
    check_number("--scenes", scenes, at_least=1)
    check_number("--frames", frames, at_least=1)
    check_number("--seed", seed, at_least=0)  # numpy's generators take no negative seed
    console = Console()
    formats = split_list(format)
    check_grids("--grid", grids)
    start = time.perf_counter()
    folder = Output(out, members=("*",), exists_hint="choose an empty folder, or pass --overwrite to write into it")
    with claim_outputs([folder], overwrite=overwrite):  # the preview too: it is written into the folder
        with Progress(
            TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TextColumn("sweeps"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, transient=True,
        ) as bar:
            task = bar.add_task("synth", total=None)
            manifest = write_dataset(
                out, scenes=scenes, frames=frames, formats=formats, seed=seed, image_size=parse_image_size(image_size),
                grids=grids, nuscenes_version=nuscenes_version, overwrite=overwrite,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        elapsed = time.perf_counter() - start
        table = Table(title=f"synthetic dataset in {escape(str(out))}", title_justify="left")
        table.add_column("format", style="bold cyan")
        table.add_column("root")
        for name, entry in manifest.data["formats"].items():
            extra = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("root", "sensor_root"))
            table.add_row(name, escape(f"{out / entry['root']}" + (f"  ({extra})" if extra else "")))
        table.add_row("ground truth", escape(f"{out / 'ground_truth'}  (exact labels + masks per key frame)"))
        console.print(table)
        layouts = ", ".join(f"{s['name']} {s['layout']}" for s in manifest.data["scenes"])
        # Numbers with their units first, the free text last: rich wraps at any space, and the layout
        # list used to push "in 4.3 s" over a line break between the number and its unit.
        console.print(f"{scenes} scenes x {frames} key frames in {elapsed:.1f} s: {escape(layouts)}")
        if preview and {"nuscenes", "occ3d"} <= set(formats):
            path = save_contact_sheet(manifest, manifest.scene_names[0], 0, Path(out) / "preview.png")
            console.print(f"preview: {escape(str(path))}")
