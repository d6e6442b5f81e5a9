"""Every ``b2s ...`` command line in README.md and docs/*.md parses with the real CLI.

Lines of fenced code blocks (backslash continuations joined) and inline code spans are parsed by the
Typer app's own parser, ``make_context`` of the command, which checks option names, value types,
choices and, for complete lines, required options, and runs nothing: no command body is invoked.

Docs write synopses as well as examples; their notation is read as follows:
- ``[--opt VALUE]``: the brackets are dropped and the option is parsed;
- ``a|b|c``: the first alternative stands for all;
- ``...``: the value of the option before it, or else "more arguments": the line is then a fragment.
An inline code span, or a line with a free-standing ``...``, is a fragment: an option it names must
exist and take the value it shows, but options it leaves out may be required ones, and a span may end
with an option named without its value (prose: "`b2s evaluate --checkpoint` runs ...").

docs/converters.md runs its example plug-in reader (examples/plugin_reader) after installing it; the
``example_reader_installed`` fixture does what that install does, so its ``--source`` values resolve.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from b2s_cli.app import app

try:  # typer 0.2x vendors its own click
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`(b2s [^`]+)`")
COMMAND = re.compile(r"^(?:\$ )?(?:[A-Za-z_][A-Za-z0-9_]*=\S+ )*b2s ")  # an optional prompt and VAR=value prefixes
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}
PLACEHOLDER = "PLACEHOLDER"  # what `--opt ...` stands for: any text (a path, a name)


def doc_commands(path: Path) -> list[tuple[str, str, bool]]:
    """(where 'FILE:LINE', the command text, whether it is a whole line of a code block)."""
    found = []
    in_block, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            text = (pending + " " + line.strip()).strip() if pending else line.strip()
            start = start if pending else number
            if text.endswith("\\"):
                pending = text[:-1].strip()
                continue
            pending = ""
            match = COMMAND.match(text)
            if match:
                found.append((f"{path.relative_to(ROOT)}:{start}", "b2s " + text[match.end():], True))
        else:
            found.extend((f"{path.relative_to(ROOT)}:{number}", span.strip(), False) for span in INLINE.findall(line))
    return found


CASES = [case for path in DOCS for case in doc_commands(path)]


def _takes_value(command, option: str) -> bool:
    for param in getattr(command, "params", []):
        if option in (*param.opts, *param.secondary_opts):
            return not (getattr(param, "is_flag", False) or getattr(param, "count", False))
    return False


def read_synopsis(text: str, command, whole: bool = True) -> tuple[list[str], bool]:
    """The arguments after ``b2s`` (the command name first) as the parser gets them, and whether the
    line is a fragment (``whole``: a line of a code block, not an inline span)."""
    words = shlex.split(text, comments=True)[1:]
    words = words[:next((i for i, w in enumerate(words) if w in SHELL_OPERATORS), len(words))]
    args, fragment = [], False
    for word in words:
        word = word.lstrip("[").rstrip("]")
        if not word:
            continue
        if word == "...":
            if args and args[-1].startswith("-") and _takes_value(command, args[-1]):
                args.append(PLACEHOLDER)
            else:
                fragment = True
            continue
        args.append(word.split("|")[0] if "|" in word and not word.startswith("-") else word)
    if not whole and len(args) > 1 and args[-1].startswith("-") and _takes_value(command, args[-1]):
        args.pop()  # an existing option, named in prose without its value
    return args, fragment or not whole


@pytest.fixture(scope="module")
def root():
    group = typer.main.get_command(app)
    return group, group.context_class(group, info_name="b2s")


@pytest.fixture(scope="module")
def example_reader_installed(tmp_path_factory):
    """examples/plugin_reader as `pip install -e` leaves it: importable, its entry point registered."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "b2s_toy_fleet-0.1.0.dist-info"  # examples/plugin_reader/pyproject.toml's entry point
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: b2s-toy-fleet\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[b2s.readers]\ntoyfleet = toy_fleet.reader:ToyFleetReader\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "examples" / "plugin_reader"))
        patch.syspath_prepend(str(site))
        yield


def test_the_docs_hold_command_lines():
    """The extraction itself: both kinds are found, continuations are joined (a guard against a test
    that passes because it reads nothing)."""
    assert len(CASES) > 40, len(CASES)
    whole = {text for _, text, block in CASES if block}
    assert any(text.startswith("b2s convert --source nuscenes") and "--out" in text for text in whole), whole  # README, joined
    assert any(not block for _, _, block in CASES)


def check_parses(where: str, text: str, whole: bool, group, root_context) -> None:
    """Parse one documented command line (see the module docstring); fail the test naming the line."""
    name = shlex.split(text, comments=True)[1]
    if name.startswith("-"):  # a root option: b2s --version / --help
        command, args, fragment = group, shlex.split(text, comments=True)[1:], False
    else:
        command = group.get_command(root_context, name)
        assert command is not None, f"{where}: `{text}`: no command '{name}'"
        args, fragment = read_synopsis(text, command, whole)
        args = args[1:]
    try:
        command.make_context(name if command is not group else "b2s", args,
                             parent=None if command is group else root_context).close()
    except typer.Exit as done:  # an eager --help / --version: printed, nothing run
        assert done.exit_code == 0, f"{where}: `{text}`"
    except click_exceptions.MissingParameter as missing:
        if not fragment:
            pytest.fail(f"{where}: `{text}`: {missing.format_message()}")
    except click_exceptions.UsageError as err:  # unknown option, bad value or choice, extra argument
        pytest.fail(f"{where}: `{text}`: {err.format_message()}")


@pytest.mark.parametrize("where, text, whole", CASES, ids=[f"{w} {t[:50]}" for w, t, _ in CASES])
def test_doc_command_parses(where, text, whole, root, example_reader_installed):
    group, root_context = root
    name = shlex.split(text, comments=True)[1]
    if name.isupper():  # `b2s COMMAND --help`: what it shows must hold for every command
        for real in group.list_commands(root_context):
            check_parses(where, text.replace(name, real, 1), whole, group, root_context)
    else:
        check_parses(where, text, whole, group, root_context)


def test_a_broken_line_fails_the_check(root):
    """What the check refuses: an unknown option, a bad choice, a missing required option."""
    group, root_context = root
    evaluate = group.get_command(root_context, "evaluate")
    for args, error in ((["--data", "v.h5", "--save-predictions"], click_exceptions.NoSuchOption),
                        (["--data", "v.h5", "--mask", "sometimes"], click_exceptions.BadParameter),
                        (["--predictions", "p.h5"], click_exceptions.MissingParameter)):
        with pytest.raises(error):
            evaluate.make_context("evaluate", args, parent=root_context)
    args, fragment = read_synopsis("b2s curves RUN_DIR [RUN_DIR ...] --out curves.png [--smoothing 0.6]",
                                   group.get_command(root_context, "curves"))
    assert args == ["curves", "RUN_DIR", "RUN_DIR", "--out", "curves.png", "--smoothing", "0.6"] and fragment
    args, fragment = read_synopsis("b2s evaluate --checkpoint ... --mask camera|lidar  # scores", evaluate)
    assert args == ["evaluate", "--checkpoint", PLACEHOLDER, "--mask", "camera"] and not fragment
    args, fragment = read_synopsis("b2s evaluate --tta --predictions-out", evaluate, whole=False)
    assert args == ["evaluate", "--tta"] and fragment  # prose naming an option
    args, _ = read_synopsis("b2s evaluate --tta --save-predictions", evaluate, whole=False)
    assert args[-1] == "--save-predictions"  # an unknown option stays, and fails the parse
