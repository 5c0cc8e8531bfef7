"""Shared bits of the headless commands: consoles, JSON output and clean failure."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    console: Console
    err_console: Console


def __getattr__(name: str) -> Any:
    """`console` and `err_console` are made on first use: `tunedeck plan --json` never needs
    Rich, and importing it costs a noticeable part of a fast command's run time.

    Neither reads console markup: what the commands print is full of text from users and files
    (run names, paths, failure reasons, preset values), and a `[/x]` in it must print as it is,
    not fail. Styled output is built from `rich.text.Text`."""
    if name in ("console", "err_console"):
        from rich.console import Console

        globals()["console"] = Console(highlight=False, markup=False)
        globals()["err_console"] = Console(stderr=True, highlight=False, markup=False)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1  # the thing checked is bad (data errors, a run that failed)
EXIT_USAGE = 2  # bad input: unknown preset, bad value, no such file


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no Rich markup), one object."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def labelled(label: str, style: str, line: str) -> Text:
    """`label: line` with the label styled and the line shown as it is (control characters as
    escapes, so a message quoting a file cannot drive the terminal)."""
    from rich.text import Text

    from tui.widgets.format import printable

    return Text.assemble((f"{label}:", style), " ", printable(line))


def print_problem(line: str) -> None:
    """One `error: ...` line on stderr."""
    __getattr__("err_console").print(labelled("error", "bold red", line), soft_wrap=True)


def print_warning(line: str) -> None:
    """One `warning: ...` line on stderr."""
    __getattr__("err_console").print(labelled("warning", "yellow", line), soft_wrap=True)


def fail(lines: str | Iterable[str], code: int = EXIT_USAGE) -> NoReturn:
    """Print each problem as `error: ...` on stderr and exit with `code`; never a traceback."""
    if isinstance(lines, str):
        lines = [lines]
    for line in lines:
        print_problem(line)
    # SystemExit rather than typer.Exit: click lets it through with its code, and the commands
    # that run without typer (`plan`) need not import it.
    raise SystemExit(code)


def gib(value_bytes: int | float | None, digits: int = 1) -> str:
    """Bytes as GiB text, or a dash when unknown."""
    if value_bytes is None:
        return "-"
    return f"{value_bytes / 1024**3:.{digits}f}"
