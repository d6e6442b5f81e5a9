"""``b2s curves``: learning curves of training runs (loss, learning rate, binary IoU, mIoU) in one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from b2s_cli.errors import cli_errors
from b2s_cli.options import OptionValueError, check_number
from b2s_core.output_paths import Output, claim_outputs
from b2s_core.viz.curves import DEFAULT_SMOOTHING, PANELS, read_runs, write_curves

_console = Console(highlight=False, soft_wrap=True)  # soft wrap: paths stay whole


@cli_errors
def curves(
    runs: list[Path] = typer.Argument(..., help="Training run folders (the --out of b2s pretrain / finetune), or their "
                                                "metrics.jsonl files.", show_default=False),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    smoothing: float = typer.Option(DEFAULT_SMOOTHING, "--smoothing", help="Weight of the moving average over the "
                                    "train loss, 0 (none) to 0.99 (very smooth); the raw loss stays drawn faint."),
    title: Optional[str] = typer.Option(None, "--title", help="A heading above the legend."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Draw train loss, learning rate, validation binary IoU and mIoU against steps, the runs overlaid.

    Example: b2s curves runs/pretrain runs/finetune --out curves.png
    """
    check_number("--smoothing", smoothing, at_least=0, at_most=0.99)
    if out.suffix.lower() != ".png":
        raise OptionValueError(f"--out {out}: the curves are a PNG picture; give a path ending in .png")
    metrics = read_runs(runs)  # every folder checked (and read) before anything is written
    with claim_outputs([Output(out)], {"RUN_DIR": [run.path for run in metrics]}, overwrite=overwrite):
        picture = write_curves(metrics, out, smoothing=smoothing, title=title)
    for warning in picture.warnings:
        _console.print(f"[yellow]warning:[/] {escape(warning)}")
    titles = {panel.key: panel.title for panel in PANELS}
    if picture.empty:
        _console.print(f"no data for: {', '.join(titles[key] for key in picture.empty)}")
    _console.print(str(out), markup=False)
