"""`tunedeck watch RUN`: the run monitor of one run, straight away."""

from __future__ import annotations

from typing import Annotated

import typer

from tui.commands.common import fail


def watch(
    run: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough) or run folder.")],
    runs_dir: Annotated[
        str | None,
        typer.Option(
            "--runs-dir",
            help="Runs folder (default: TUNEDECK_RUNS, else the data dir).",
        ),
    ] = None,
) -> None:
    """Open the run monitor: loss chart, GPU use, progress, cost and the log, live.
    q leaves it; the run goes on."""
    from presets import locations
    from runner.runs import RunError, RunStore

    try:
        RunStore(locations.runs_dir(runs_dir)).resolve(run)
    except RunError as exc:
        fail(exc.lines)
    from tui.app import run_watch

    run_watch(run, runs_dir)


def register(app: typer.Typer) -> None:
    app.command("watch")(watch)
