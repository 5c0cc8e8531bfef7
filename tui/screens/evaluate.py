"""Evaluation of one run: base against tuned on held-out data, answers side by side.

Shows the run's eval.json when there is one; `e` runs a fresh evaluation in its own process
(`runner.evaluate`), with its progress on the status line. Leaving the screen does not stop an
evaluation under way: its results land in the run folder all the same.
"""

from __future__ import annotations

from pathlib import Path
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

from tui.widgets.eval_view import headline, samples_group, scores_table, unavailable_notes

# Prompts answered by an evaluation started from the app.
APP_SAMPLES = 8


class EvalScreen(Screen[None]):
    """Did the tuning help? One run against its base model."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "evaluate", "evaluate now"),
        Binding("b,escape", "back", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    class Loaded(Message):
        """eval.json read (None: there is none yet), or an evaluation finished."""

        def __init__(self, run_dir: Path | None, result: dict[str, Any] | None) -> None:
            super().__init__()
            self.run_dir = run_dir
            self.result = result

    class Progress(Message):
        def __init__(self, text: str, error: bool = False) -> None:
            super().__init__()
            self.text = text
            self.error = error

    def __init__(self, run: str, samples: int = APP_SAMPLES) -> None:
        super().__init__()
        self.run = run
        self.samples = samples
        self.run_dir: Path | None = None
        self.result: dict[str, Any] | None = None
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Static(Text(f"{self.run}  evaluation"), id="eval-title", classes="title-bar")
        yield Static(Text("reading eval.json…"), id="eval-status", classes="note")
        with VerticalScroll(id="eval-body"):
            yield Static("", id="eval-scores")
            yield Static("", id="eval-samples")
        yield Footer()

    def on_mount(self) -> None:
        self._read()

    @work(thread=True, exclusive=True, group="eval-read", exit_on_error=False)
    def _read(self) -> None:
        from runner.evaluate import read_eval
        from runner.runs import RunError

        store = self.app.store  # type: ignore[attr-defined]
        if store is None:
            self.post_message(self.Progress("the run store is not available", error=True))
            return
        try:
            run_dir = store.resolve(self.run)
        except RunError as exc:
            self.post_message(self.Progress("; ".join(exc.lines), error=True))
            return
        self.post_message(self.Loaded(run_dir, read_eval(run_dir)))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.busy = False
        self.run_dir = message.run_dir
        status = self.query_one("#eval-status", Static)
        if message.result is None:
            status.update(
                Text(
                    "not evaluated yet: e scores the base and the tuned model on the eval data "
                    f"and has both answer {self.samples} held-out prompts"
                )
            )
            return
        self.result = message.result
        self.query_one("#eval-scores", Static).update(
            Group(headline(message.result), Text(""), scores_table(message.result))
        )
        self.query_one("#eval-samples", Static).update(samples_group(message.result))
        notes = unavailable_notes(message.result)
        where = f"{message.run_dir.name}/eval.json" if message.run_dir else "eval.json"
        status.update(Text("; ".join([*notes, f"from {where} · e evaluates again"])))

    @on(Progress)
    def _progress(self, message: Progress) -> None:
        if message.error:
            self.busy = False
        style = "bold red" if message.error else ""
        self.query_one("#eval-status", Static).update(Text(message.text, style))

    def action_evaluate(self) -> None:
        if self.busy:
            self.notify("an evaluation is already running", severity="warning")
            return
        if self.run_dir is None:
            self.notify("the run folder has not been found", severity="error")
            return
        self.busy = True
        self.query_one("#eval-status", Static).update(Text("starting the evaluation…"))
        self._evaluate(self.run_dir)

    @work(thread=True, group="eval-run", exit_on_error=False)
    def _evaluate(self, run_dir: Path) -> None:
        from runner.evaluate import EvalOptions, evaluate_run
        from runner.runs import RunError

        try:
            result = evaluate_run(
                run_dir,
                EvalOptions(samples=self.samples),
                on_progress=lambda what: self.post_message(self.Progress(what + "…")),
            )
        except RunError as exc:
            self.post_message(self.Progress("evaluation: " + "; ".join(exc.lines), error=True))
            return
        self.post_message(self.Loaded(run_dir, result))

    def action_back(self) -> None:
        self.app.pop_screen()
