"""`tunedeck compare RUN RUN ...`: several runs side by side."""

from __future__ import annotations

import shutil
from typing import Annotated

import typer
from rich.text import Text

from tui.commands.common import console, fail, print_json

RunsDirOption = Annotated[
    str | None,
    typer.Option("--runs-dir", help="Runs folder (default: TUNEDECK_RUNS, else the data dir)."),
]

CHART_HEIGHT = 18


def compare(
    run_ids: Annotated[
        list[str], typer.Argument(help="Two or more run ids (or prefixes, or folders).")
    ],
    runs_dir: RunsDirOption = None,
    chart: Annotated[bool, typer.Option("--chart/--no-chart", help="Draw the loss curves.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Loss and eval curves of several runs on one chart, the settings that differ, tokens/s,
    time, money and eval results side by side."""
    from presets import locations
    from runner.compare import compare_runs
    from runner.runs import RunError, RunStore

    store = RunStore(locations.runs_dir(runs_dir))
    try:
        comparison = compare_runs(store, run_ids)
    except RunError as exc:
        fail(exc.lines)
    if as_json:
        print_json(comparison.to_json())
        return
    from tui.widgets.compare_view import draw_curves, figures_table, notes, settings_table

    if chart:
        import plotext

        width = min(console.width, shutil.get_terminal_size((100, 24)).columns, 120)
        plotext.clf()
        plotext.plotsize(width, CHART_HEIGHT)
        plotext.theme("clear")
        if draw_curves(plotext, comparison, buckets=width):
            console.print(Text.from_ansi(plotext.build()))
    console.print(figures_table(comparison))
    console.print()
    console.print(Text("settings that differ", "bold"))
    console.print(settings_table(comparison))
    for line in notes(comparison):
        console.print(line, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
