"""Probe: a preset's real training for a few steps on this box, planned against probed.

The probe is a separate process (`runner.probe`), started and waited for in a thread worker; the
screen only draws its status lines and, at the end, the table. Leaving the screen ends the
probe process.
"""

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


class ProbeScreen(Screen[None]):
    """Runs the probe of one preset and shows measured against planned."""

    CSS_PATH = "probe.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "back (ends the probe)")]

    class Status(Message):
        """A status line of the running probe."""

        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    class Finished(Message):
        def __init__(self, result: dict[str, Any] | None, error: list[str] | None) -> None:
            super().__init__()
            self.result = result
            self.error = error

    def __init__(self, preset: Any) -> None:
        super().__init__()
        self.preset = preset
        self.result: dict[str, Any] | None = None
        self._job: Any = None
        self._closed = False

    def compose(self) -> ComposeResult:
        yield Static(Text(f"probe ─ {self.preset.name}"), id="probe-title", classes="title-bar")
        with VerticalScroll(id="probe-box") as box:
            box.border_title = "planned against probed"
            yield Static(Text("checking the preset and its data...", "dim"), id="probe-status")
            yield Static("", id="probe-result")
        yield Footer()

    def on_mount(self) -> None:
        self._probe(self._gpu_memory_gib())

    def _gpu_memory_gib(self) -> float | None:
        """The first GPU's memory as the app's poller last saw it (None without a GPU)."""
        telemetry = getattr(self.app, "telemetry", None)
        snapshot = telemetry.snapshot if telemetry is not None else None
        if snapshot is None or not snapshot.available or not snapshot.gpus:
            return None
        return snapshot.gpus[0].memory_total_gib

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def _probe(self, gpu_memory_gib: float | None) -> None:
        from runner.probe import ProbeError, check_probe, ensure_inputs, new_probe_dir, run_probe

        try:
            ensure_inputs(self.preset)
        except OSError as exc:
            self.post_message(self.Finished(None, [f"demo: cannot write the demo files ({exc})"]))
            return
        problems = check_probe(self.preset)
        if problems:
            self.post_message(self.Finished(None, [*problems, "nothing probed"]))
            return
        try:
            probe_dir = new_probe_dir(self.app.runs_dir, self.preset.name)  # type: ignore[attr-defined]
            result = run_probe(
                self.preset,
                probe_dir,
                gpu_memory_gib,
                on_status=self._post_status,
                on_start=self._started,
            )
        except ProbeError as exc:
            self.post_message(self.Finished(None, exc.lines))
            return
        self.post_message(self.Finished(result, None))

    def _post_status(self, line: str) -> None:
        self.post_message(self.Status(line))

    def _started(self, job: Any) -> None:
        """Called from the worker once the probe process exists."""
        self._job = job
        if self._closed:  # left while the preset was still being checked
            job.cancel()

    @on(Status)
    def _status(self, message: Status) -> None:
        self.query_one("#probe-status", Static).update(Text(f"probe: {message.line}", "yellow"))

    @on(Finished)
    def _finished(self, message: Finished) -> None:
        status = self.query_one("#probe-status", Static)
        if message.error is not None:
            status.update(Text("\n".join(message.error), "bold red"))
            return
        from tui.widgets.probe_view import probe_header, probe_notes, probe_table

        result = message.result
        assert result is not None
        self.result = result
        status.update(probe_header(result))
        folder = Text(f"folder {result['probe_dir']}", "dim")
        self.query_one("#probe-result", Static).update(
            Group(probe_table(result), Text(""), *probe_notes(result), folder)
        )

    def on_unmount(self) -> None:
        self._closed = True
        if self._job is not None:
            self._job.cancel()

    def action_back(self) -> None:
        self.app.pop_screen()
