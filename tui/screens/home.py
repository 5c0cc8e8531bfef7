"""Home: a card per GPU, the host line and the runs list (reattach: every run, interrupted ones
flagged with a key to resume)."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui.widgets.format import count, duration, money, number
from tui.widgets.gpu_pane import GpuPanel, HostLine
from tui.widgets.telemetry import Telemetry

STATUS_STYLE = {
    "running": "green",
    "stopping": "yellow",
    "interrupted": "bold yellow",
    "completed": "cyan",
    "failed": "bold red",
}

RUNS_REFRESH_S = 2.0


def run_row(summary: Any) -> tuple[Text, ...]:
    """The cells of one run in the runs list; the status is a word, colour only adds to it."""
    state = summary.state
    status = Text(state.status, STATUS_STYLE.get(state.status, ""))
    if state.status == "interrupted":
        status.append(" (r)", "bold")
    if summary.alert:
        status.append(" !", "bold red")  # the monitor says what
    max_steps = count(state.max_steps) if state.max_steps else "?"
    return (
        Text(summary.run_id, no_wrap=True, overflow="ellipsis"),
        status,
        Text(f"{count(state.step)}/{max_steps}", justify="right"),
        Text(number(summary.last_loss), justify="right"),
        Text(duration(summary.eta_s) if state.status == "running" else "-", justify="right"),
        Text(money(summary.cost_usd), justify="right"),
    )


class HomeScreen(Screen[None]):
    """What the box has and what it is running."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "app.open_planner", "plan"),
        Binding("e", "app.open_presets", "presets"),
        Binding("n", "app.open_launch", "new run"),
        Binding("enter", "watch", "watch", show=False),
        Binding("r", "resume", "resume"),
        Binding("q", "app.quit", "quit"),
    ]

    class RunsLoaded(Message):
        def __init__(self, summaries: list[Any], error: str | None) -> None:
            super().__init__()
            self.summaries = summaries
            self.error = error

    def compose(self) -> ComposeResult:
        yield Static(id="home-title", classes="title-bar")
        yield GpuPanel(id="gpu-panel")
        yield HostLine(id="host-line")
        table: DataTable[Text] = DataTable(id="runs", cursor_type="row", zebra_stripes=False)
        table.border_title = "Runs"
        yield table
        yield Static("", id="runs-note", classes="note")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        # The run id gives way first on a narrow terminal; the figures keep their room.
        run_width = max(16, min(32, self.app.size.width - 66))
        table.add_column("run", key="run", width=run_width)
        # Fixed widths: columns do not jump as figures change, and nothing is measured late.
        for label, key, width in (
            ("status", "status", 15),
            ("step", "step", 11),
            ("loss", "loss", 6),
            ("ETA", "eta", 6),
            ("spent", "spent", 7),
        ):
            table.add_column(label, key=key, width=width)
        self._summaries: dict[str, Any] = {}
        self.app.telemetry_signal.subscribe(self, self._title)  # type: ignore[attr-defined]
        tel = self.app.telemetry  # type: ignore[attr-defined]
        self._title(tel)
        # The first read comes from on_screen_resume, which also runs when the screen first shows.
        self.set_interval(RUNS_REFRESH_S, self.refresh_runs)

    def _title(self, tel: Telemetry | None) -> None:
        parts = ["tunedeck"]
        if tel is not None:
            parts.append(tel.host.hostname)
            snap = tel.snapshot
            if snap.available:
                names = {g.name for g in snap.gpus}
                label = names.pop() if len(names) == 1 else "mixed GPUs"
                parts.append(f"{len(snap.gpus)}x {label}")
                if snap.driver_version:
                    parts.append(f"driver {snap.driver_version} CUDA {snap.cuda_version or '?'}")
            else:
                parts.append("no GPU")
        self.query_one("#home-title", Static).update(Text(" ─ ".join(parts)))

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    @work(thread=True, exclusive=True, group="runs-list")
    def refresh_runs(self) -> None:
        store = self.app.store  # type: ignore[attr-defined]
        if store is None:
            self.post_message(self.RunsLoaded([], "the run store is not available"))
            return
        try:
            summaries = store.list()
        except Exception as exc:  # a broken runs folder must read as a note, not a crash
            self.post_message(self.RunsLoaded([], f"cannot read the runs folder: {exc}"))
            return
        self.post_message(self.RunsLoaded(summaries, None))

    @on(RunsLoaded)
    def _show_runs(self, message: RunsLoaded) -> None:
        table = self.query_one("#runs", DataTable)
        note = self.query_one("#runs-note", Static)
        store = self.app.store  # type: ignore[attr-defined]
        if message.error:
            note.update(Text(message.error))
        elif not message.summaries:
            where = store.root if store is not None else "?"
            note.update(Text(f"no runs yet in {where} · [n] starts one"))
        else:
            interrupted = sum(1 for s in message.summaries if s.state.status == "interrupted")
            note.update(
                Text(
                    f"{interrupted} interrupted run{'s' if interrupted != 1 else ''}: "
                    "select and press r to resume · enter watches a run"
                    if interrupted
                    else "enter watches the selected run"
                )
            )
        wanted = [s.run_id for s in message.summaries]
        current = [str(k.value) for k in table.rows]
        self._summaries = {s.run_id: s for s in message.summaries}
        if wanted != current:
            cursor_key = (
                current[table.cursor_row] if current and table.cursor_row < len(current) else None
            )
            table.clear()
            for s in message.summaries:
                table.add_row(*run_row(s), key=s.run_id)
            if cursor_key in wanted:
                table.move_cursor(row=wanted.index(cursor_key))
            return
        columns = ("run", "status", "step", "loss", "eta", "spent")
        for s in message.summaries:
            for column, cell in zip(columns, run_row(s), strict=True):
                table.update_cell(s.run_id, column, cell)

    def _selected(self) -> Any | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self._summaries.get(str(key))

    @on(DataTable.RowSelected, "#runs")
    def _row_selected(self, _: DataTable.RowSelected) -> None:
        self.action_watch()

    def action_watch(self) -> None:
        summary = self._selected()
        if summary is not None:
            self.app.open_monitor(summary.run_id)  # type: ignore[attr-defined]

    def action_resume(self) -> None:
        summary = self._selected()
        if summary is None:
            self.notify("no run selected", severity="warning")
            return
        self.app.resume_run(summary.run_id)  # type: ignore[attr-defined]
