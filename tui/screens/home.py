"""Home: a card per GPU, the host line and the runs list (reattach: every run, interrupted ones
flagged with a key to resume)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from tui.widgets.format import count, duration, money, number, one_line
from tui.widgets.gpu_pane import GpuPanel, HostLine
from tui.widgets.telemetry import Telemetry

STATUS_STYLE = {
    "running": "green",
    "stopping": "yellow",
    "interrupted": "bold yellow",
    "completed": "cyan",
    "failed": "bold red",
}

Column = tuple[str, str, int]  # label, key, width in cells

RUNS_REFRESH_S = 2.0
# The table's frame: its border (2) and room for a vertical scrollbar (2).
RUNS_FRAME_W = 4
CELL_PADDING_W = 2  # DataTable's cell padding, one each side
STATUS_W = 15  # "interrupted (r)"
STATUS_SHORT_W = 11  # "interrupted"
# On a narrow terminal these give way, last first: the run id is never cut while the others can
# make room (two runs of one preset differ only in their last characters).
RUNS_OPTIONAL: tuple[Column, ...] = (
    ("loss", "loss", 6),
    ("ETA", "eta", 6),
    ("spent", "spent", 7),
)


def _step_text(step: int, max_steps: int | None) -> str:
    return f"{count(step)}/{count(max_steps) if max_steps else '?'}"


def _id_text(summary: Any, marked: bool) -> str:
    return ("+ " if marked else "") + one_line(summary.run_id)


def runs_layout(
    summaries: list[Any], width: int, marked: list[str] | None = None
) -> tuple[Column, ...]:
    """The runs list's columns for a screen `width` cells wide: the id as wide as the longest
    (a run marked for comparison starts with `+`), then status and step, then loss, ETA and
    spent while they fit."""
    marked = marked or []
    id_w = max([len("run"), *(len(_id_text(s, s.run_id in marked)) for s in summaries)])
    # As wide as "total/total": the column does not jump as a run counts up.
    step_w = max(
        [
            len("step"),
            *(
                len(_step_text(s.state.max_steps or s.state.step, s.state.max_steps))
                for s in summaries
            ),
        ]
    )
    room = width - RUNS_FRAME_W

    def used(columns: list[Column]) -> int:
        return sum(w + CELL_PADDING_W for _, _, w in columns)

    columns: list[Column] = [
        ("run", "run", id_w),
        ("status", "status", STATUS_W),
        ("step", "step", step_w),
    ]
    for optional in RUNS_OPTIONAL:
        if used([*columns, optional]) > room:
            break
        columns.append(optional)
    if used(columns) > room:
        columns[1] = ("status", "status", STATUS_SHORT_W)
    if used(columns) > room:  # narrower than the essentials: only now does the id give way
        columns[0] = ("run", "run", max(8, id_w - (used(columns) - room)))
    return tuple(columns)


def run_row(summary: Any, layout: tuple[Column, ...], marked: bool = False) -> tuple[Text, ...]:
    """The cells of one run for the columns of `layout`; the status is a word, colour only adds
    to it. A run marked for comparison starts with `+`."""
    state = summary.state
    cells: dict[str, Text] = {}
    for _, key, width in layout:
        if key == "run":
            cells[key] = Text(_id_text(summary, marked), no_wrap=True, overflow="ellipsis")
        elif key == "status":
            status = Text(state.status, STATUS_STYLE.get(state.status, ""))
            if state.status == "interrupted" and width >= STATUS_W:
                status.append(" (r)", "bold")
            if summary.alert:
                status.append(" !", "bold red")  # the monitor says what
            cells[key] = status
        elif key == "step":
            cells[key] = Text(_step_text(state.step, state.max_steps), justify="right")
        elif key == "loss":
            cells[key] = Text(number(summary.last_loss), justify="right")
        elif key == "eta":
            eta = duration(summary.eta_s) if state.status == "running" else "-"
            cells[key] = Text(eta, justify="right")
        elif key == "spent":
            cells[key] = Text(money(summary.cost_usd), justify="right")
    return tuple(cells[key] for _, key, _ in layout)


class HomeScreen(Screen[None]):
    """What the box has and what it is running."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "app.open_planner", "plan"),
        Binding("e", "app.open_presets", "presets"),
        Binding("n", "app.open_launch", "new run"),
        # Before the runs table: with no runs, enter starts the demo rather than doing nothing.
        Binding("enter", "enter", "watch", show=False, priority=True),
        Binding("r", "resume", "resume"),
        Binding("v", "evaluate", "eval"),
        Binding("space", "mark", "mark", show=False),
        Binding("c", "compare", "compare"),
        Binding("q", "app.quit", "quit"),
    ]

    class RunsLoaded(Message):
        def __init__(self, summaries: list[Any], error: str | None) -> None:
            super().__init__()
            self.summaries = summaries
            self.error = error

    class DemoProgress(Message):
        """What the demo's worker is doing now."""

        def __init__(self, doing: str) -> None:
            super().__init__()
            self.doing = doing

    class DemoDone(Message):
        """The demo run started (`run_id`), or could not (`error` lines)."""

        def __init__(self, run_id: str | None, error: list[str] | None) -> None:
            super().__init__()
            self.run_id = run_id
            self.error = error

    def compose(self) -> ComposeResult:
        yield Static(id="home-title", classes="title-bar")
        yield GpuPanel(id="gpu-panel")
        yield HostLine(id="host-line")
        table: DataTable[Text] = DataTable(id="runs", cursor_type="row", zebra_stripes=False)
        table.border_title = "Runs"
        yield table
        yield Static("", id="runs-note", classes="note")
        yield Static("", id="demo-line", classes="note")
        yield Footer()

    def on_mount(self) -> None:
        self._layout: tuple[Column, ...] = ()
        self._summaries: dict[str, Any] = {}
        self._no_runs = False  # the runs folder was read and holds no run
        self._demo_started_s: float | None = None  # monotonic; None when no demo is starting
        self._demo_doing = ""
        self._demo_timer: Timer | None = None
        self._demo_error: list[str] | None = None  # why the last try failed, while shown
        self._marked: list[str] = []  # runs marked for a comparison, in the order marked
        self.query_one("#demo-line", Static).display = False
        self._lay_out([])
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

    def on_resize(self) -> None:
        self._lay_out(list(self._summaries.values()))

    def _lay_out(self, summaries: list[Any]) -> bool:
        """Set the columns for these runs at this width and refill the table; True when the
        columns changed. Fixed widths: columns do not jump as figures change."""
        layout = runs_layout(summaries, self.app.size.width, self._marked)
        if layout == self._layout:
            return False
        table = self.query_one("#runs", DataTable)
        cursor_row = table.cursor_row
        table.clear(columns=True)
        for label, key, width in layout:
            table.add_column(label, key=key, width=width)
        self._layout = layout
        for s in summaries:
            table.add_row(*run_row(s, layout, s.run_id in self._marked), key=s.run_id)
        if summaries:
            table.move_cursor(row=min(max(cursor_row, 0), len(summaries) - 1))
        return True

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
            note.update(Text(f"no runs yet in {where}"))
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
        self._no_runs = not message.error and not message.summaries
        if self._demo_started_s is None and (self._demo_error is None or not self._no_runs):
            # A failure stays on screen until enter tries again (or a run shows up).
            self._demo_error = None
            self._offer_demo(self._no_runs)
        wanted = [s.run_id for s in message.summaries]
        current = [str(k.value) for k in table.rows]
        self._summaries = {s.run_id: s for s in message.summaries}
        if wanted == current and self._lay_out(message.summaries):
            return
        if wanted != current:
            cursor_key = (
                current[table.cursor_row] if current and table.cursor_row < len(current) else None
            )
            if not self._lay_out(message.summaries):
                table.clear()
                for s in message.summaries:
                    marked = s.run_id in self._marked
                    table.add_row(*run_row(s, self._layout, marked), key=s.run_id)
            if cursor_key in wanted:
                table.move_cursor(row=wanted.index(cursor_key))
            return
        keys = [key for _, key, _ in self._layout]
        for s in message.summaries:
            cells = run_row(s, self._layout, s.run_id in self._marked)
            for key, cell in zip(keys, cells, strict=True):
                table.update_cell(s.run_id, key, cell)

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

    def action_enter(self) -> None:
        if self._selected() is not None:
            self.action_watch()
        elif self._no_runs and self._demo_started_s is None:
            self._demo_started_s = time.monotonic()
            self._demo_error = None
            self._demo_doing = "starting"
            self._show_demo_progress()
            self._demo_timer = self.set_interval(0.5, self._show_demo_progress)
            self._start_demo()

    # ------------------------------------------------------------------ the demo, on enter

    def _offer_demo(self, offer: bool) -> None:
        line = self.query_one("#demo-line", Static)
        line.display = offer
        if offer:
            text = Text("press enter to try the demo", "bold")
            text.append(
                ": a tiny model made on this machine, trained for about a minute; no GPU and no "
                "download needed · n starts a run of your own"
            )
            line.update(text)

    def _show_demo_progress(self) -> None:
        if self._demo_started_s is None:
            return
        elapsed_s = time.monotonic() - self._demo_started_s
        text = Text("demo: ", "bold")
        text.append(f"{self._demo_doing}… {elapsed_s:.0f} s")
        line = self.query_one("#demo-line", Static)
        line.display = True
        line.update(text)

    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def _start_demo(self) -> None:
        """Build the demo files if they are missing (in a process of its own, so the app never
        loads torch), then launch the `demo` preset like any other run."""
        from presets import PresetError, load_preset
        from runner.demo import DemoError, build_demo_process, demo_ready
        from runner.runs import RunError

        store = self.app.store  # type: ignore[attr-defined]
        if store is None:
            self.post_message(self.DemoDone(None, ["the run store is not available"]))
            return
        try:
            if not demo_ready():
                self.post_message(self.DemoProgress("building the demo model and data (once)"))
                build_demo_process(
                    lambda doing: self.post_message(
                        self.DemoProgress(f"building the demo model and data (once): {doing}")
                    )
                )
            self.post_message(self.DemoProgress("checking the demo data and starting the run"))
            result = store.launch(load_preset("demo"))
        except (DemoError, PresetError, RunError) as exc:
            self.post_message(self.DemoDone(None, exc.lines))
            return
        self.post_message(self.DemoDone(result.run_id, None))

    @on(DemoProgress)
    def _demo_progress(self, message: DemoProgress) -> None:
        self._demo_doing = message.doing
        self._show_demo_progress()

    @on(DemoDone)
    def _demo_done(self, message: DemoDone) -> None:
        self._demo_stopped()
        if message.error or message.run_id is None:
            self._demo_failed(message.error or ["the demo did not start"])
            return
        self.query_one("#demo-line", Static).display = False
        self.refresh_runs()
        self.app.open_monitor(message.run_id)  # type: ignore[attr-defined]

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        # What the worker did not expect still reaches the screen, and enter can try again.
        if event.worker.group == "demo" and event.state == WorkerState.ERROR:
            self._demo_stopped()
            self._demo_failed([f"{type(event.worker.error).__name__}: {event.worker.error}"])

    def _demo_stopped(self) -> None:
        self._demo_started_s = None
        if self._demo_timer is not None:
            self._demo_timer.stop()
            self._demo_timer = None

    def _demo_failed(self, lines: list[str]) -> None:
        self._demo_error = lines
        text = Text("the demo could not start: ", "bold red")
        text.append("\n".join(lines))
        text.append("\npress enter to try again", "bold")
        line = self.query_one("#demo-line", Static)
        line.display = True
        line.update(text)
        self.notify("\n".join(lines), title="demo", severity="error", markup=False)

    def action_mark(self) -> None:
        """Mark (or unmark) the selected run for a comparison."""
        summary = self._selected()
        if summary is None:
            return
        if summary.run_id in self._marked:
            self._marked.remove(summary.run_id)
        else:
            self._marked.append(summary.run_id)
        if not self._lay_out(list(self._summaries.values())):  # the id column may widen
            table = self.query_one("#runs", DataTable)
            marked = summary.run_id in self._marked
            table.update_cell(summary.run_id, "run", run_row(summary, self._layout, marked)[0])
        self.notify(f"{len(self._marked)} marked · c compares them", timeout=2)

    def action_compare(self) -> None:
        known = [r for r in self._marked if r in self._summaries]
        if len(known) < 2:
            self.notify(
                "mark two or more runs with space, then c compares them", severity="warning"
            )
            return
        self.app.open_compare(known)  # type: ignore[attr-defined]

    def action_evaluate(self) -> None:
        summary = self._selected()
        if summary is None:
            self.notify("no run selected", severity="warning")
            return
        self.app.open_eval(summary.run_id)  # type: ignore[attr-defined]

    def action_resume(self) -> None:
        summary = self._selected()
        if summary is None:
            self.notify("no run selected", severity="warning")
            return
        self.app.resume_run(summary.run_id)  # type: ignore[attr-defined]
