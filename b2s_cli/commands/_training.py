"""What ``b2s pretrain`` and ``b2s finetune`` share: option parsing helpers and the result table."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from b2s_cli.options import DEVICE_HELP, Device, choices
from b2s_core.output_paths import Output, claim_outputs
from b2s_core.train.config import AMP_MODES, BINARY_DATA, STRATEGIES, ConfigError, TrainConfig

if TYPE_CHECKING:  # b2s_core.train.loop imports torch, which `b2s info` / `--help` must not load (b2s_cli/app.py)
    from b2s_core.train.loop import TrainResult

# b2s_core.models.config.VARIANTS and PRESETS, written out: importing them loads b2s_core.models and
# torch; tests/test_cli_consistency.py checks they agree.
Model = choices("Model", ("sparse-ls", "sparse-bevformer", "ls", "bevformer"))
Preset = choices("Preset", ("paper", "small", "tiny"))
Strategy = choices("Strategy", STRATEGIES)
BinaryData = choices("BinaryData", BINARY_DATA)
Amp = choices("Amp", AMP_MODES)


# The options pretrain and finetune share, declared once: the same flag, help and default in both.
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="Global batch over all processes. (default: 8)",
                                              show_default=False)]
GpusOption = Annotated[int, typer.Option(
    help="Processes on this machine (one per GPU; with --device cpu, Gloo processes). >1 starts torchrun.")]
RunFolderOption = Annotated[Path, typer.Option(help="Run folder: config.yaml, checkpoint.pt, metrics.jsonl / .csv.",
                                               show_default=False)]
ConfigFileOption = Annotated[Path, typer.Option(
    "--config", help="YAML or TOML file of training settings (options given here win).", show_default=False)]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")]
OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Start over in an --out that holds an earlier run (its metrics logs are removed).")]
LearningRateOption = Annotated[float, typer.Option(help="AdamW learning rate. (default: 2e-4)", show_default=False)]
BinaryBalanceOption = Annotated[float, typer.Option(
    "--binary-balance",
    help="Weigh the BCE's occupied voxels by (free / occupied)^P over the training data; 0 = unweighted, as the "
         "paper; 0.5 helps short runs learn what stands on the ground. (default: 0)",
    show_default=False)]
AmpOption = Annotated[Amp, typer.Option(metavar="<mode>", help="Mixed precision on CUDA: none, bf16 or fp16. "
                                        "(default: none)", show_default=False)]
SyncBatchNormOption = Annotated[bool, typer.Option("--sync-bn/--no-sync-bn",
                                                   help="SyncBatchNorm across GPUs. (default: off)",
                                                   show_default=False)]
DeviceOption = Annotated[Device, typer.Option(metavar="<device>", help=f"{DEVICE_HELP} (default: auto)",
                                              show_default=False)]
WorkersOption = Annotated[int, typer.Option(help="DataLoader workers per process. (default: 2)", show_default=False)]
MaxStepsOption = Annotated[int, typer.Option("--max-steps",
                                             help="Stop after this many optimiser steps (shortens the schedule).",
                                             show_default=False)]
FrozenStagesOption = Annotated[int, typer.Option(
    "--frozen-stages",
    help="Backbone stages kept frozen: -1 none, 0 the stem, n the stem and stages 1..n. (default: -1)",
    show_default=False)]
NormEvalOption = Annotated[bool, typer.Option("--norm-eval/--no-norm-eval",
                                              help="Keep the backbone's BatchNorm statistics frozen. (default: off)",
                                              show_default=False)]
SeedOption = Annotated[int, typer.Option(help="Random seed. (default: 0)", show_default=False)]

# What a run writes into --out (b2s_core.train: loop, launch, logging) and, of those, the logs it
# appends to: a run started over must not append its records to another run's.
RUN_FILES = ("checkpoint.pt", "config.yaml", "launch.yaml", "metrics.jsonl", "train.csv", "val.csv", "tensorboard")
RUN_LOGS = ("metrics.jsonl", "train.csv", "val.csv", "tensorboard")


def expand_paths(values: list[Path] | None) -> list[str] | None:
    """Repeated ``--data`` values (each possibly a quoted glob, expanded by resolve_config); None when not given."""
    return [str(v) for v in values] if values else None


@contextlib.contextmanager
def claim_run_folder(config: TrainConfig, *, config_file: Path | None, overwrite: bool) -> Iterator[None]:
    """Hold --out for this run (b2s_core.output_paths): never over an input, an earlier run only with
    --resume (continue it) or --overwrite (start over: its logs are removed, the rest replaced)."""
    if config.resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite starts it over: give one of them")
    run = Output(Path(config.out), members=RUN_FILES, resuming=config.resume,
                 exists_hint="continue it with --resume, or pass --overwrite to start over")
    inputs = {"--data": config.data, "--semantic-data": config.semantic_data, "--pseudo-data": config.pseudo_data,
              "--pretrain-data": config.pretrain_data, "--val-data": config.val_data, "--init": config.init,
              "--backbone-weights": config.backbone_weights, "--config": config_file}
    with claim_outputs([run], inputs, overwrite=overwrite):
        if overwrite:
            for name in RUN_LOGS:
                path = run.path / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        yield


def print_result(result: TrainResult | Path, console: Console | None = None) -> None:
    console = console or Console()
    if isinstance(result, Path):  # multi-process run: the workers printed their own progress
        console.print(f"[bold green]done[/]: checkpoint {escape(str(result))}")
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
    table.add_row("checkpoint", escape(str(result.checkpoint)))
    table.add_row("metrics", escape(str(Path(result.config.out) / "metrics.jsonl")))
    console.print(table)
