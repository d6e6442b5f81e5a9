"""The ``b2s`` command: registration only; each command lives in ``b2s_cli/commands/``.

Every command module is imported here, so none may import torch at its top: ``b2s info`` and
``b2s --help`` would pay seconds for it. Commands that run a model import the library code that needs
torch inside the command function (tests/test_cli_consistency.py checks; benchmarks/bench_cli_startup.py
measures the start-up).
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import typer

from b2s_cli.commands import (
    align,
    autolabel,
    build_binary,
    convert,
    curves,
    evaluate,
    export,
    finetune,
    info,
    pretrain,
    synth,
    visualize,
)

app = typer.Typer(
    name="b2s",
    help="b2s: camera-based 3D semantic occupancy that learns from large-scale binary occupancy data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(given: bool) -> None:
    if not given:
        return
    try:
        number = package_version("b2s")
    except PackageNotFoundError:  # run from a source tree that was never installed
        number = "unknown (the b2s package is not installed)"
    typer.echo(f"b2s {number}")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version of b2s and exit."),
) -> None:
    """b2s: camera-based 3D semantic occupancy that learns from large-scale binary occupancy data."""


# Commands are listed here in the order of a user's day (see README).
app.command("synth")(synth.synth)
app.command("convert")(convert.convert)
app.command("build-binary")(build_binary.build_binary)
app.command("align")(align.align)
app.command("info")(info.info)
app.command("pretrain")(pretrain.pretrain)
app.command("finetune")(finetune.finetune)
app.command("evaluate")(evaluate.evaluate)
app.command("autolabel")(autolabel.autolabel)
app.command("export")(export.export)
app.command("visualize")(visualize.visualize)
app.command("curves")(curves.curves)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Library warnings as one line each, like the errors (no source path or code line)."""
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _one_line_warning
    app()


if __name__ == "__main__":
    main()
