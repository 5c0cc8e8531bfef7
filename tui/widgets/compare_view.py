"""Renderables of a run comparison (`runner.compare.Comparison`): the curves of every run on one
plotext chart, their figures side by side and the settings in which they differ. Shared by
`tunedeck compare` and the app's comparison screen; run ids and values are put in as `Text`."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from tui.widgets.format import count, duration, money, number
from tui.widgets.metrics_model import downsample

COLOURS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow", "white")


def draw_curves(plt: Any, comparison: Any, buckets: int) -> bool:
    """Each run's train loss as a line and its eval loss as points, one colour per run, on the
    plotext figure `plt` (the `plotext` module or a PlotextPlot's). False when nothing to draw."""
    drawn = False
    for i, view in enumerate(comparison.runs):
        colour = COLOURS[i % len(COLOURS)]
        if view.curves.train:
            steps, values = zip(*view.curves.train, strict=True)
            x, y = downsample(list(steps), list(values), buckets)
            plt.plot(x, y, label=f"{view.run_id} train", marker="braille", color=colour)
            drawn = True
        if view.curves.eval:
            steps, values = zip(*view.curves.eval, strict=True)
            plt.scatter(
                list(steps), list(values), label=f"{view.run_id} eval", marker="o", color=colour
            )
            drawn = True
    plt.xlabel("step")
    if not drawn:
        plt.title("no loss logged yet")
    return drawn


def _row(label: str, cells: list[str]) -> list[Text]:
    return [Text(label, "bold"), *(Text(c, justify="right") for c in cells)]


def figures_table(comparison: Any) -> Table:
    """Status, steps, losses, speed, time, money and eval results, one column per run."""
    table = Table(box=None, pad_edge=False)
    table.add_column("")
    for view in comparison.runs:
        table.add_column(Text(view.run_id), justify="right", overflow="fold")
    figures = [v.figures() for v in comparison.runs]

    def cells(fn: Any) -> list[str]:
        return [fn(f) for f in figures]

    rows = [
        ("status", cells(lambda f: str(f["status"]))),
        ("step", cells(lambda f: f"{count(f['step'])}/{count(f['max_steps'])}")),
        ("train loss", cells(lambda f: number(f["train_loss"], 4))),
        ("eval loss", cells(lambda f: number(f["eval_loss"], 4))),
        (
            "best eval",
            cells(
                lambda f: (
                    "-"
                    if f["best_eval_loss"] is None
                    else f"{number(f['best_eval_loss'], 4)} @{f['best_eval_step']:g}"
                )
            ),
        ),
        (
            "overfitting from",
            cells(
                lambda f: (
                    "-"
                    if f["overfitting_turn_step"] is None
                    else f"step {f['overfitting_turn_step']:g}"
                )
            ),
        ),
        ("tokens/s", cells(lambda f: count(f["tokens_per_s"]))),
        ("time", cells(lambda f: duration(f["elapsed_s"]))),
        (
            "money",
            cells(
                lambda f: money(f["cost_usd"]) if f["price_usd_per_h"] is not None else "no price"
            ),
        ),
        ("eval: base", cells(lambda f: number(f["base_eval_loss"], 4))),
        ("eval: tuned", cells(lambda f: number(f["tuned_eval_loss"], 4))),
        ("eval: ROUGE-L", cells(lambda f: number(f["tuned_rouge_l"]))),
    ]
    for label, values in rows:
        table.add_row(*_row(label, values))
    return table


def settings_table(comparison: Any) -> Table | Text:
    """The settings that are not the same in every run."""
    if not comparison.differing:
        return Text("the runs' settings are the same (name aside)", "dim")
    table = Table(box=None, pad_edge=False)
    table.add_column("setting", overflow="fold")
    for view in comparison.runs:
        table.add_column(Text(view.run_id), overflow="fold")
    for key, values in comparison.differing:
        table.add_row(Text(key), *(Text(v) for v in values))
    return table


def notes(comparison: Any) -> list[Text]:
    """Early stopping and overfitting, run by run."""
    out = []
    for view in comparison.runs:
        if view.early_stopped:
            out.append(Text(f"{view.run_id}: {view.early_stopped}"))
        if view.overfitting:
            out.append(
                Text.assemble((f"{view.run_id}: warning: ", "yellow"), view.overfitting.message())
            )
    return out
