"""Several runs side by side: their loss and eval curves on one chart, their figures (speed,
time, money, eval results) and the settings in which they differ. Opened from the runs list
with the runs marked (`space`) and `c`; reads the run folders in a worker."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plotext import PlotextPlot

from tui.widgets.compare_view import draw_curves, figures_table, notes, settings_table


class CompareChart(PlotextPlot):
    """Every run's curves on one chart."""

    def show(self, comparison: Any) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        draw_curves(plt, comparison, buckets=max(20, self.size.width))
        self.refresh()


class CompareScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("b,escape", "back", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    class Compared(Message):
        def __init__(self, comparison: Any | None, error: str | None = None) -> None:
            super().__init__()
            self.comparison = comparison
            self.error = error

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = list(run_ids)
        self.comparison: Any | None = None

    def compose(self) -> ComposeResult:
        yield Static(
            Text("comparing " + ", ".join(self.run_ids), no_wrap=True, overflow="ellipsis"),
            id="compare-title",
            classes="title-bar",
        )
        chart = CompareChart(id="compare-chart")
        chart.border_title = "loss (line: train, o: eval)"
        yield chart
        with VerticalScroll(id="compare-body"):
            yield Static(Text("reading the runs…"), id="compare-figures")
        yield Footer()

    def on_mount(self) -> None:
        self._read()

    @work(thread=True, exclusive=True, group="compare-read", exit_on_error=False)
    def _read(self) -> None:
        from runner.compare import compare_runs
        from runner.runs import RunError

        store = self.app.store  # type: ignore[attr-defined]
        if store is None:
            self.post_message(self.Compared(None, "the run store is not available"))
            return
        try:
            self.post_message(self.Compared(compare_runs(store, self.run_ids)))
        except RunError as exc:
            self.post_message(self.Compared(None, "; ".join(exc.lines)))

    @on(Compared)
    def _compared(self, message: Compared) -> None:
        figures = self.query_one("#compare-figures", Static)
        if message.comparison is None:
            figures.update(Text(message.error or "nothing to compare", "bold red"))
            return
        self.comparison = message.comparison
        self.query_one(CompareChart).show(message.comparison)
        parts: list[Any] = [
            figures_table(message.comparison),
            Text(""),
            Text("settings that differ", "bold"),
            settings_table(message.comparison),
        ]
        parts += notes(message.comparison)
        figures.update(Group(*parts))

    def on_resize(self) -> None:
        if self.comparison is not None:
            self.query_one(CompareChart).show(self.comparison)

    def action_back(self) -> None:
        self.app.pop_screen()
