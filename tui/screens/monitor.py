"""Run monitor: progress, cost, the loss chart, GPU use over time and the log of one run.

Opened from the runs list or directly by `tunedeck watch RUN`. A worker reads the run folder
twice a second (new metrics records, new log lines, the summary); the screen only draws.
Leaving the monitor or the app never stops the run.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from tui.screens.confirm import ConfirmScreen
from tui.widgets.charts import LossChart, gpu_history_text
from tui.widgets.format import bar, count, duration, money, number
from tui.widgets.log_file import LogLine
from tui.widgets.log_pane import PAGE_LOAD_LINES, LogPane
from tui.widgets.metrics_model import RunMetrics
from tui.widgets.run_feed import FeedUpdate, RunFeed
from tui.widgets.telemetry import Telemetry

POLL_S = 0.5
SUMMARY_EVERY = 2  # polls between summary reads (1 s)

STATUS_STYLE = {
    "running": "bold green",
    "stopping": "bold yellow",
    "interrupted": "bold yellow",
    "completed": "bold cyan",
    "failed": "bold red",
}


def header_text(summary: Any, width: int) -> Text:
    """`run-id  running  step 1840/6000 ███▏░░ 31 %  ETA 2h31m  $4.12 of ~$13.20`."""
    state = summary.state
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(summary.run_id + "  ", "bold")
    out.append(state.status, STATUS_STYLE.get(state.status, ""))
    if state.status == "interrupted":
        out.append(" ([r] resumes)", "yellow")
    if state.status == "failed" and state.failure_reason:
        out.append(f" ({state.failure_reason})", "red")
    elif state.status == "interrupted" and state.failure_reason:
        out.append(f" ({state.failure_reason})", "yellow")
    if summary.alert:
        out.append(f" ! {summary.alert}", "bold red")
    total = state.max_steps
    out.append(f"  step {count(state.step)}/{count(total) if total else '?'} ")
    fraction = state.step / total if total else None
    tail = ""
    if fraction is not None:
        tail += f" {fraction * 100:.0f} %"
    if summary.eta_s is not None:
        tail += f"  ETA {duration(summary.eta_s)}"
    if summary.cost_usd is not None:
        tail += f"  {money(summary.cost_usd)}"
        if summary.projected_cost_usd is not None and state.status in ("running", "stopping"):
            tail += f" of ~{money(summary.projected_cost_usd)}"
    else:
        tail += "  $ ? (no price_usd_per_h)"
    used = len(out) + len(tail)
    bar_w = max(5, min(30, width - used - 2))
    out.append(bar(fraction, bar_w), "green")
    out.append(tail)
    return out


def stats_text(metrics: RunMetrics, summary: Any | None) -> Text:
    """Throughput, optimiser figures and measured peak memory against the plan."""
    last = metrics.last
    out = Text(no_wrap=False)
    tps = last.get("tokens_per_s")
    if tps is None and summary is not None:
        tps = summary.tokens_per_s
    out.append(f"{count(tps) if tps is not None else '-'} tok/s")
    if "learning_rate" in last:
        out.append(f" · lr {last['learning_rate']:.2e}")
    if "grad_norm" in last:
        out.append(f" · grad-norm {number(last['grad_norm'])}")
    if "epoch" in last:
        out.append(f" · epoch {last['epoch']:.2f}")
    out.append("\n")
    out.append(f"loss {number(metrics.train_loss.last)}")
    out.append(f" · eval {number(metrics.eval_loss.last)}")
    planned = summary.state.planned_device_peak_gib if summary is not None else None
    peak = metrics.peak_gpu_mem_gib
    out.append("\npeak ")
    out.append(f"{peak:.1f} GiB measured" if peak is not None else "- measured")
    if planned is not None:
        out.append(f" · plan {planned:.1f} GiB")
        if peak is not None and planned > 0:
            delta = (peak - planned) / planned * 100
            out.append(f" ({delta:+.0f} %)", "red" if delta > 10 else "")
    else:
        out.append(" · no plan estimate")
    return out


class MonitorScreen(Screen[None]):
    """One run, live."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "stop", "stop"),
        Binding("r", "resume", "resume"),
        Binding("l", "full_log", "full log"),
        Binding("slash", "search", "search"),
        Binding("n", "search_next", "next match", show=False),
        Binding("b,escape", "back", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    class Polled(Message):
        def __init__(self, update: FeedUpdate) -> None:
            super().__init__()
            self.update = update

    class LogWindow(Message):
        """Lines read for scroll-back or a search."""

        def __init__(
            self, kind: str, lines: list[LogLine], first_index: int = 0, reaches_end: bool = False
        ) -> None:
            super().__init__()
            self.kind = kind
            self.lines = lines
            self.first_index = first_index
            self.reaches_end = reaches_end

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run = run
        self.metrics = RunMetrics()
        self.summary: Any | None = None
        self.feed: RunFeed | None = None
        self._polls = 0
        self._search: str | None = None
        self._chart_dirty = False

    def compose(self) -> ComposeResult:
        yield Static(Text(f"{self.run}  reading…"), id="monitor-header", classes="title-bar")
        yield Static("", id="monitor-warning")
        with Horizontal(id="monitor-top"):
            chart = LossChart(id="loss-chart")
            chart.border_title = "loss"
            yield chart
            with Vertical(id="monitor-side"):
                yield Static("", id="monitor-gpus")
                yield Static("", id="monitor-stats")
        yield LogPane(id="log-pane")
        yield Input(placeholder="search the log (enter finds, escape cancels)", id="log-search")
        yield Footer()

    def on_mount(self) -> None:
        search = self.query_one("#log-search", Input)
        search.display = False
        self.query_one("#monitor-gpus", Static).border_title = "GPU"
        self.app.telemetry_signal.subscribe(self, self._telemetry)  # type: ignore[attr-defined]
        tel = self.app.telemetry  # type: ignore[attr-defined]
        if tel is not None:
            self._telemetry(tel)
        self.query_one(LogPane).focus()
        self._poll()
        self.set_interval(POLL_S, self._poll)

    def _header_error(self, message: str) -> None:
        self.query_one("#monitor-header", Static).update(Text(f"{self.run}: {message}", "red"))

    # ------------------------------------------------------------------ reading (worker)

    @work(thread=True, exclusive=True, group="monitor-poll", exit_on_error=False)
    def _poll(self) -> None:
        if self.feed is None:
            store = self.app.store  # type: ignore[attr-defined]
            if store is None:
                self.post_message(self.Polled(FeedUpdate(error="the run store is not available")))
                return
            self.feed = RunFeed(store, self.run)
        self._polls += 1
        with_summary = self._polls % SUMMARY_EVERY == 1 or self.summary is None
        self.post_message(self.Polled(self.feed.poll(with_summary=with_summary)))

    @on(Polled)
    def _polled(self, message: Polled) -> None:
        update = message.update
        if update.error and update.summary is None and self.summary is None:
            self._header_error(update.error)
            return
        if update.summary is not None:
            self.summary = update.summary
        if update.metrics_reset:
            self.metrics.reset()
        if update.records or update.metrics_reset:
            self.metrics.add(update.records)
            self.query_one(LossChart).show(self.metrics)
        pane = self.query_one(LogPane)
        if update.log_lines or update.log_reset or update.log_pending != pane.pending:
            pane.append(update.log_lines, update.log_pending, update.log_reset)
        self._draw_text()

    def _draw_text(self) -> None:
        header = self.query_one("#monitor-header", Static)
        if self.summary is not None:
            header.update(header_text(self.summary, header.size.width or 100))
        self.query_one("#monitor-stats", Static).update(stats_text(self.metrics, self.summary))
        warning = self.metrics.eval_rising()
        warn = self.query_one("#monitor-warning", Static)
        warn.display = warning is not None
        warn.update(Text("warning: " + warning, "bold yellow") if warning else "")

    def _telemetry(self, tel: Telemetry) -> None:
        box = self.query_one("#monitor-gpus", Static)
        snap = tel.snapshot
        if not snap.available:
            box.update(Text("no NVIDIA GPU found: training runs on the CPU", "dim"))
            return
        width = box.content_size.width or 40
        out = Text()
        for i, gpu in enumerate(snap.gpus):
            if i:
                out.append("\n")
            used = gpu.memory_used_bytes
            out.append_text(
                gpu_history_text(
                    gpu.index,
                    gpu.name,
                    gpu.utilization_pct,
                    used / 1024**3 if used is not None else None,
                    gpu.memory_total_gib,
                    tel.util_history.get(gpu.index, ()),
                    tel.mem_history_gib.get(gpu.index, ()),
                    width,
                )
            )
        box.update(out)

    # ------------------------------------------------------------------ log scroll-back

    @on(LogPane.NeedOlder)
    def _need_older(self, message: LogPane.NeedOlder) -> None:
        self._read_older(message.offset)

    @work(thread=True, group="log-read", exit_on_error=False)
    def _read_older(self, offset: int) -> None:
        assert self.feed is not None and self.feed.log is not None
        lines = self.feed.log.read_backward(offset, PAGE_LOAD_LINES)
        self.post_message(self.LogWindow("older", lines))

    @on(LogPane.NeedNewer)
    def _need_newer(self, message: LogPane.NeedNewer) -> None:
        self._read_newer(message.offset)

    @work(thread=True, group="log-read", exit_on_error=False)
    def _read_newer(self, offset: int) -> None:
        assert self.feed is not None and self.feed.log is not None
        log = self.feed.log
        lines, end, _ = log.read_forward(offset, 256 * 1024)
        self.post_message(self.LogWindow("newer", lines, reaches_end=end >= log.size()))

    @on(LogPane.NeedStart)
    def _need_start(self) -> None:
        self._read_start()

    @work(thread=True, group="log-read", exit_on_error=False)
    def _read_start(self) -> None:
        assert self.feed is not None and self.feed.log is not None
        lines, _, _ = self.feed.log.read_forward(0, 256 * 1024)
        self.post_message(self.LogWindow("start", lines))

    @on(LogPane.FollowResumed)
    def _follow_again(self) -> None:
        if self.feed is not None:
            self.feed.reset_log()
        self._poll()

    @on(LogWindow)
    def _log_window(self, message: LogWindow) -> None:
        pane = self.query_one(LogPane)
        if message.kind == "older":
            pane.prepend(message.lines)
        elif message.kind == "newer":
            pane.extend_window(message.lines, message.reaches_end)
        elif message.kind == "start":
            pane.show_window(message.lines, 0, None)
        elif message.kind == "search":
            if not message.lines:
                pane.loading = False
                self.notify(f"not found: {self._search}", severity="warning")
                return
            pane.show_window(message.lines, message.first_index, self._search)

    # ------------------------------------------------------------------ search

    def action_search(self) -> None:
        search = self.query_one("#log-search", Input)
        search.display = True
        search.value = self._search or ""
        search.focus()

    @on(Input.Submitted, "#log-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        search = self.query_one("#log-search", Input)
        search.display = False
        pane = self.query_one(LogPane)
        pane.focus()
        if not event.value:
            return
        self._search = event.value
        self._find(event.value, self._search_from(pane))

    def key_escape(self) -> None:
        search = self.query_one("#log-search", Input)
        if search.display:
            search.display = False
            self.query_one(LogPane).focus()

    def _search_from(self, pane: LogPane) -> int | None:
        """Searches go backwards (towards older lines) from the top line on screen."""
        if pane.follow or not pane.lines:
            return None
        return pane.lines[min(pane.top, len(pane.lines) - 1)].offset

    def action_search_next(self) -> None:
        if self._search:
            pane = self.query_one(LogPane)
            self._find(self._search, self._search_from(pane))

    @work(thread=True, exclusive=True, group="log-search", exit_on_error=False)
    def _find(self, needle: str, before: int | None) -> None:
        if self.feed is None or self.feed.log is None:
            return
        log = self.feed.log
        hit = log.find(needle, before=before)
        if hit is None:
            self.post_message(self.LogWindow("search", []))
            return
        above = log.read_backward(hit, 5)
        below, _, _ = log.read_forward(hit, 64 * 1024)
        self.post_message(self.LogWindow("search", above + below[:200], first_index=len(above)))

    # ------------------------------------------------------------------ run control

    def action_full_log(self) -> None:
        pane = self.query_one(LogPane)
        if self.maximized is pane:
            self.minimize()
        else:
            self.maximize(pane)
            pane.focus()

    def action_back(self) -> None:
        if self.maximized is not None:
            self.minimize()
            return
        self.app.pop_screen()

    def action_stop(self) -> None:
        if self.summary is None or self.summary.state.status not in ("running", "stopping"):
            self.notify("this run is not running", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop_run()

        self.app.push_screen(
            ConfirmScreen(
                f"Stop {self.summary.run_id}?",
                "It saves a checkpoint first; r resumes it from there.",
            ),
            answered,
        )

    @work(thread=True, group="run-control", exit_on_error=False)
    def _stop_run(self) -> None:
        from runner.runs import RunError

        store = self.app.store  # type: ignore[attr-defined]
        try:
            store.stop(self.summary.run_id if self.summary else self.run)
        except RunError as exc:
            self.app.call_from_thread(self.notify, "\n".join(exc.lines), severity="error")
            return
        self.app.call_from_thread(self.notify, "stopping: saving a checkpoint first")

    def action_resume(self) -> None:
        run_id = self.summary.run_id if self.summary is not None else self.run
        self.app.resume_run(run_id)  # type: ignore[attr-defined]
