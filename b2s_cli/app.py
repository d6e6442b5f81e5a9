"""The ``b2s`` command: registration only; each command lives in ``b2s_cli/commands/``."""

from __future__ import annotations

import warnings

import typer

from b2s_cli.commands import align
from b2s_cli.commands import autolabel
from b2s_cli.commands import build_binary
from b2s_cli.commands import convert
from b2s_cli.commands import curves
from b2s_cli.commands import evaluate
from b2s_cli.commands import finetune
from b2s_cli.commands import info
from b2s_cli.commands import pretrain
from b2s_cli.commands import synth
from b2s_cli.commands import visualize

app = typer.Typer(
    name="b2s",
    help="b2s: camera-based 3D semantic occupancy that learns from large-scale binary occupancy data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
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
