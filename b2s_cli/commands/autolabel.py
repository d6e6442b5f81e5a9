"""``b2s autolabel``: pseudo-labels for binary data from an offboard model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from b2s_cli.errors import cli_errors
from b2s_cli.options import (
    DEVICE_HELP,
    Backend,
    Device,
    OptionValueError,
    RayAddressOption,
    check_number,
    choices,
    refuse_together,
    resolve_device,
    value_of,
)
from b2s_core.output_paths import Output, claim_outputs
from b2s_core.ray_engine import check_backend
from b2s_core.taxonomy import TAXONOMIES

# b2s_core.apps.autolabel.FORMS, written out: that module imports torch, which this one must not
# (b2s_cli/app.py); tests/test_cli_consistency.py checks they agree.
Form = choices("Form", ("paper", "given-geometry"))
Taxonomy = choices("Taxonomy", TAXONOMIES)


@cli_errors
def autolabel(
    checkpoint: Path = typer.Option(..., "--checkpoint",
                                    help="Offboard model checkpoint (trained with the GT binary as input).",
                                    show_default=False),
    data: Path = typer.Option(..., "--data",
                              help="Data file whose binary occupancy is labelled (e.g. from b2s build-binary).",
                              show_default=False),
    out: Path = typer.Option(..., "--out", help="Pseudo-label file to write (unified .h5).", show_default=False),
    top1: bool = typer.Option(False, "--top1", help="Store the best class of each occupied voxel (1 byte per voxel)."),
    top2: bool = typer.Option(False, "--top2", help="Store the two best classes and their logits (soft targets)."),
    form: Form = typer.Option("paper", "--form",
                              help="paper: Top-k over all classes, free included (the model's geometry, App. D); "
                                   "given-geometry: the given occupied voxels keep their geometry and get the best "
                                   "non-free classes."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average the logits of the four BEV flips."),
    taxonomy: Optional[Taxonomy] = typer.Option(None, "--taxonomy",
                                                help="Label set of the model (default: inferred from the checkpoint).",
                                                show_default=False),
    batch_size: int = typer.Option(1, "--batch-size", help="Frames per model batch (1 or more)."),
    device: Device = typer.Option("auto", "--device", help=f"torch device for the model: {DEVICE_HELP}"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes (0: load in this process)."),
    gpus: int = typer.Option(1, "--gpus",
                             help="Data-parallel processes on this machine (one per GPU; with --device cpu, "
                                  "Gloo processes), each labelling its share of the scenes. >1 starts torchrun."),
    backend: Backend = typer.Option("local", "--backend",
                                    help="local: this process (or --gpus torchrun processes); ray: one Ray task per "
                                         "scene, one GPU each with a CUDA --device (local Ray instance, or "
                                         "--ray-address; needs the ray extra)."),
    ray_address: RayAddressOption = None,
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace --out if it exists (an interrupted run resumes from <out>.parts/ "
                                        "without it)."),
) -> None:
    """Write Top1 / Top2 pseudo-labels of binary occupancy data with an offboard model (rerun to resume).

    Example: b2s autolabel --checkpoint runs/offboard/checkpoint.pt --data nuplan-binary.h5 --top2 --out labels.h5
    """
    check_number("--batch-size", batch_size, at_least=1)
    check_number("--workers", workers, at_least=0)
    check_number("--gpus", gpus, at_least=1)
    if top1 == top2:
        raise OptionValueError("give exactly one of --top1 and --top2")
    refuse_together("--backend ray", backend.value == "ray", "--gpus", gpus > 1,
                    "Ray gives each scene's task a GPU of its own; --gpus starts torchrun instead")
    # a missing extra is told before any output is claimed
    check_backend(backend.value, ray_address, lambda where, problem: OptionValueError(f"{where}: {problem}"))
    # Imported here, not at the top: b2s_core.apps.autolabel imports torch, which `b2s info` / `--help` must not load.
    from b2s_core.apps.autolabel import AutolabelConfig
    from b2s_core.apps.autolabel import autolabel as run_autolabel

    config = AutolabelConfig(mode="top1" if top1 else "top2", form=form.value, tta=tta, batch_size=batch_size,
                             device=resolve_device(device.value), num_workers=workers, taxonomy=value_of(taxonomy))
    console = Console()
    columns = (TextColumn("labelling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    output = Output(out, parts=True)
    with claim_outputs([output], {"--data": data, "--checkpoint": checkpoint}, overwrite=overwrite), \
            Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("labelling", total=None)
        report = run_autolabel(checkpoint, data, out, config, progress=lambda done, total: bar.update(task, completed=done, total=total),
                               gpus=gpus, backend=backend.value, ray_address=ray_address)
    table = Table(title=f"{report.mode} pseudo-labels ({report.form} form) · {report.frames} frames", show_header=True)
    table.add_column("bytes per frame")
    table.add_column("compressed", justify="right")
    table.add_column("raw", justify="right")
    b = report.bytes_per_frame
    table.add_row("Top1 classes (1 per occupied voxel)", f"{b['labels']:,.0f}", f"{b['labels_raw']:,.0f}")
    if report.mode == "top2":
        table.add_row("Top2 classes + logits (6 per labelled voxel)", f"{b['top2']:,.0f}", f"{b['top2_raw']:,.0f}")
    table.add_row("whole file", f"{b['file']:,.0f}", "")
    console.print(table)
    console.print(f"occupied voxels per frame: {report.occupied_voxels / max(report.frames, 1):,.0f}")
    console.print(f"pseudo-labels: {escape(str(report.path))}")
