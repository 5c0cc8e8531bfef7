"""`tunedeck data check`: read training data the way a run would and say what is wrong."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from tui.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    console,
    err_console,
    fail,
    print_json,
)
from tui.widgets.format import one_line, printable

data_app = typer.Typer(help="Check training data before a run.", no_args_is_help=True)

VERDICT_STYLE = {"ok": "bold green", "warnings": "bold yellow", "errors": "bold red"}
FORMAT_NAMES = ("auto", "messages", "sharegpt", "alpaca", "text", "prompt_completion", "preference")


@data_app.command("check")
def check(
    path: Annotated[
        str,
        typer.Argument(help="A JSONL, JSON, CSV or Parquet file, a folder of them, or a hub id."),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Model whose tokenizer counts tokens (local folder or cached)."
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", help="Tokens per example in training (TRL max_length)."),
    ] = None,
    trainer: Annotated[
        str, typer.Option("--trainer", help="sft (chat, text, completions) or dpo (preferences).")
    ] = "sft",
    fmt: Annotated[
        str,
        typer.Option("--format", help=f"Row format: {', '.join(FORMAT_NAMES)}."),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a dataset: errors (exit 1) stop a run; warnings (exit 0) are worth a look."""
    if trainer not in ("sft", "dpo"):
        fail(f"--trainer must be sft or dpo, got {trainer!r}", EXIT_USAGE)
    if fmt not in FORMAT_NAMES:
        fail(f"--format must be one of {', '.join(FORMAT_NAMES)}, got {fmt!r}", EXIT_USAGE)
    if max_length is not None and max_length <= 0:
        fail(f"--max-length must be a positive number of tokens, got {max_length}", EXIT_USAGE)

    from runner.data import check_dataset

    # A spinner on stderr while reading (Rich draws it only on a terminal; stdout stays clean
    # for --json).
    # A status given a str reads it as markup whatever the console says: the path is user text.
    with err_console.status(Text(f"checking {path}"), spinner="dots") as status:

        def progress(line: str) -> None:
            status.update(Text(f"checking {path}: {line}"))

        report = check_dataset(
            path, trainer=trainer, model=model, max_length=max_length, fmt=fmt, progress=progress
        )
    if report.usage_error:
        if as_json:
            print_json(report.to_json())
            raise typer.Exit(EXIT_USAGE)
        fail(report.usage_error, EXIT_USAGE)
    if as_json:
        print_json(report.to_json())
    else:
        _print_report(report.to_json())
    raise typer.Exit(EXIT_FAILED if report.errors else EXIT_OK)


def _stat(values: dict[str, Any] | None, unit: str = "") -> str:
    if not values:
        return "-"
    return (
        f"min {values['min']:,} · median {values['median']:,} · "
        + (f"p95 {values['p95']:,} · " if "p95" in values else "")
        + f"max {values['max']:,}{unit}"
    )


def _print_report(data: dict[str, Any]) -> None:
    from runner.data import rows_text

    stats = data["stats"]
    title = Text(one_line(data["path"]))
    table = Table(show_header=False, expand=False, title=title, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", no_wrap=False)
    table.add_row("rows", rows_text(data["rows"], data["bad_rows"]))
    files = data["files"]
    table.add_row(
        "files",
        f"{files:,} {'file' if files == 1 else 'files'}, {data['size_bytes'] / 1e6:,.1f} MB",
    )
    table.add_row("format", f"{data['format']} for {data['trainer']}")
    if "eval_rows" in stats:
        table.add_row("eval rows", f"{stats['eval_rows']:,}")
    tokens = stats.get("tokens")
    if tokens:
        table.add_row("tokens", _stat(tokens))
        table.add_row(
            "truncated",
            f"{tokens['truncated']:,} ({100 * tokens['truncated_share']:.1f} %) over max_length "
            f"{tokens['max_length']:,} ({tokens['max_length_source']})",
        )
    table.add_row("characters", _stat(stats.get("chars")))
    if stats.get("turns") and stats["turns"]["max"] > 1:
        table.add_row("turns", _stat(stats["turns"]))
    dups = stats.get("duplicates")
    if dups:
        table.add_row(
            "duplicates",
            f"{dups['exact']:,} exact · {dups['normalised']:,} normalised · "
            f"{dups['contradictions']:,} contradictions",
        )
    if stats.get("labels"):
        table.add_row(
            "labels", Text(", ".join(f"{k!r}: {v:,}" for k, v in stats["labels"].items()))
        )
    verdict = data["verdict"]
    table.add_row("verdict", Text(verdict, style=VERDICT_STYLE[verdict]))
    console.print(table)
    for title, lines, style in (
        ("errors", data["errors"], "red"),
        ("warnings", data["warnings"], "yellow"),
    ):
        if lines:
            console.print(Text(f"{title} ({len(lines)}):", style))
            for line in lines:
                console.print(f"  • {printable(line)}", soft_wrap=True)
    for note in data["notes"]:
        console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
    console.print(Text(f"checked in {data['elapsed_s']:.1f} s", "dim"))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
