"""``b2s evaluate``: IoU / mIoU / RayIoU tables of predictions against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from b2s_cli.errors import cli_errors
from b2s_cli.options import DEVICE_HELP, Device, Mask, check_number, choices, resolve_device, value_of
from b2s_core.errors import B2SError
from b2s_core.output_paths import Output, claim_outputs

# The keys of b2s_core.metrics.protocols.PROTOCOLS, written out: that module imports torch, which this
# one must not (b2s_cli/app.py); tests/test_cli_consistency.py checks they agree.
Protocol = choices("Protocol", ("occ3d", "openoccupancy", "openscene"))


class EvaluateOptionError(B2SError):
    """Options that do not make one evaluation."""


@cli_errors
def evaluate(
    data: Path = typer.Option(..., "--data", help="Ground-truth data file (unified .h5 with semantics).", show_default=False),
    predictions: Optional[Path] = typer.Option(None, "--predictions",
                                               help="Predictions to score: a unified .h5 (semantics = prediction) or a "
                                                    "folder of per-token <token>.npz files (key pred, "
                                                    "as SparseOcc / FlashOcc write them)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Trained model to run over --data instead of a predictions file."),
    predictions_out: Optional[Path] = typer.Option(None, "--predictions-out",
                                                   help="With --checkpoint: where the model's predictions file goes "
                                                        "(default: <out>.predictions.h5)."),
    out: Path = typer.Option(Path("evaluation.json"), "--out", help="JSON file for the scores."),
    protocol: Optional[Protocol] = typer.Option(None, "--protocol",
                                                help="Benchmark protocol (default: the data file's taxonomy).",
                                                show_default=False),
    mask: Optional[Mask] = typer.Option(None, "--mask",
                                        help="Occ3D voxels to score (default: camera when the data have it).",
                                        show_default=False),
    rayiou: bool = typer.Option(True, "--rayiou/--no-rayiou", help="Also compute SparseOcc's RayIoU at 1, 2, 4 m."),
    ray_step: float = typer.Option(1.0, "--ray-step",
                                   help="Degrees between RayIoU ray azimuths, in (0, 360] (1 = the published "
                                        "definition)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Frames per metric update (1 or more)."),
    device: Device = typer.Option("auto", "--device", help=f"torch device for the model and the ray marching: {DEVICE_HELP}"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes when running a checkpoint (0: load in this process)."),
    gpus: int = typer.Option(1, "--gpus",
                             help="With --checkpoint: data-parallel processes on this machine (one per GPU; "
                                  "with --device cpu, Gloo processes), each predicting and scoring its share of the "
                                  "scenes. >1 starts torchrun."),
    tta: bool = typer.Option(False, "--tta", help="With --checkpoint: average the logits of the four BEV flips."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out (and --predictions-out) if they exist."),
) -> None:
    """Score semantic occupancy predictions: per-class IoU, mIoU, geometry IoU, binary-decoder IoU, RayIoU.

    Example: b2s evaluate --data val.h5 --predictions pred.h5 --protocol occ3d --mask camera --out scores.json
    Example: b2s evaluate --data val.h5 --predictions sparseocc_preds/ --out scores.json
    """
    check_number("--ray-step", ray_step, above=0, at_most=360)
    check_number("--batch-size", batch_size, at_least=1)
    check_number("--workers", workers, at_least=0)
    check_number("--gpus", gpus, at_least=1)
    if (predictions is None) == (checkpoint is None):
        raise EvaluateOptionError("give exactly one of --predictions and --checkpoint")
    if checkpoint is None and (tta or predictions_out is not None or workers):
        raise EvaluateOptionError("--tta, --predictions-out and --workers apply only with --checkpoint")
    if checkpoint is None and gpus > 1:
        raise EvaluateOptionError("--gpus runs a checkpoint in parallel; scoring --predictions runs in one process: drop --gpus")
    if not rayiou and ray_step != 1.0:
        raise EvaluateOptionError("--ray-step sets the RayIoU rays; --no-rayiou computes none: give one of them")
    pred_path = None if checkpoint is None else predictions_out or out.with_name(out.stem + ".predictions.h5")
    outputs = [Output(out)] + ([] if pred_path is None else [Output(pred_path, option="--predictions-out", parts=gpus > 1)])
    inputs = {"--data": data, "--predictions": predictions, "--checkpoint": checkpoint}
    # Imported here, not at the top: b2s_core.apps.evaluate imports torch, which `b2s info` / `--help` must not load.
    from b2s_core.apps.evaluate import (
        EvaluateConfig,
        evaluate_checkpoint,
        evaluate_files,
        render_table,
        summary_line,
        write_json,
    )

    torch_device = resolve_device(device.value)
    config = EvaluateConfig(protocol=value_of(protocol), mask=value_of(mask), rayiou=rayiou, batch_size=batch_size,
                            ray_azimuth_step=ray_step, device=None if torch_device == "cpu" else torch_device)
    console = Console()
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with claim_outputs(outputs, inputs, overwrite=overwrite), Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(done: int, total: int, label: str = "scoring") -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        if checkpoint is not None:
            result = evaluate_checkpoint(checkpoint, data, pred_path, config, device=torch_device, batch_size=1,
                                         num_workers=workers, tta=tta, progress=progress, gpus=gpus)
        else:
            result = evaluate_files(data, predictions, config, progress=progress)
        scores = write_json(result, out)
    console.print(render_table(result))
    console.print(summary_line(result))
    console.print(f"scores: {escape(str(scores))}")
    if checkpoint is not None:
        console.print(f"predictions: {escape(str(result.extra.get('predictions')))}")
