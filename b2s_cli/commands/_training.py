"""What ``b2s pretrain`` and ``b2s finetune`` share: option parsing helpers and the result table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from b2s_core.train.loop import TrainResult


def expand_paths(values: list[Path] | None) -> list[str] | None:
    """Repeated ``--data`` values (each possibly a quoted glob, expanded by resolve_config); None when not given."""
    return [str(v) for v in values] if values else None


def print_result(result: TrainResult | Path, console: Console | None = None) -> None:
    console = console or Console()
    if isinstance(result, Path):  # multi-process run: the workers printed their own progress
        console.print(f"[bold green]done[/]: checkpoint {result}")
        return
    table = Table(title="training", show_header=False, box=None, title_justify="left", padding=(0, 2))
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("status", "finished" if result.finished else f"stopped at step {result.state.step} (resume with --resume)")
    table.add_row("steps", f"{result.state.step:,}")
    table.add_row("epochs", f"{result.state.epoch} of {result.config.epochs}")
    for key, value in result.state.metrics.items():
        if key != "step" and not key.startswith("iou/"):
            table.add_row(f"val {key}", f"{value:,}" if isinstance(value, int) else f"{value:.2f}")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("metrics", str(Path(result.config.out) / "metrics.jsonl"))
    console.print(table)
