"""Run monitor: progress, cost, the loss chart, GPU use over time and the log of one run.

Opened from the runs list or directly by `tunedeck watch RUN`. A worker reads the run folder
twice a second (new metrics records, new log lines, the summary); the screen only draws.
Leaving the monitor or the app never stops the run.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.cells import cell_len
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
from tui.widgets.format import (
    bar,
    count,
    duration,
    fit_variants,
    money,
    number,
    one_line,
    printable,
)
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


BAR_MIN_W = 5
BAR_MAX_W = 30


def header_text(summary: Any, width: int) -> Text:
    """`run-id  running  step 1,840/6,000 ███▏░░ 31 %  ETA 2h31m  $4.12 of ~$13.20`, fitted to
    `width` cells: the bar shrinks, then the hints, cost, ETA and percent give way whole; the
    id, the status and the step stay. A failure's reason is shown under the header."""
    state = summary.state
    total = state.max_steps
    fraction = state.step / total if total else None
    # (rank, variants from longest to shortest) in display order; higher ranks give way first.
    parts: list[tuple[int | tuple[int, ...], list[str]]] = [
        (0, [one_line(summary.run_id)]),
        (0, [state.status]),
        (6, ["([r] resumes)"] if state.status == "interrupted" else []),
        (1, [f"step {count(state.step)}/{count(total) if total else '?'}"]),
        (2, [f"{fraction * 100:.0f} %"] if fraction is not None else []),
        (2, [f"ETA {duration(summary.eta_s)}"] if summary.eta_s is not None else []),
    ]
    if summary.cost_usd is None:
        parts.append((5, ["$ ? (no price_usd_per_h)", "$ ?"]))
    elif summary.projected_cost_usd is not None and state.status in ("running", "stopping"):
        cost = money(summary.cost_usd)
        parts.append((3, [f"{cost} of ~{money(summary.projected_cost_usd)}", cost]))
    else:
        parts.append((3, [money(summary.cost_usd)]))
    chosen = fit_variants(parts, width)
    line_w = sum(cell_len(t) + 2 for t in chosen if t is not None) - 2
    bar_w = min(BAR_MAX_W, width - line_w - 1) if fraction is not None else 0

    styles = ["bold", STATUS_STYLE.get(state.status, ""), "yellow"]
    out = Text(no_wrap=True, overflow="ellipsis")
    gap = ""
    for k, text in enumerate(chosen):
        if text is None:
            continue
        out.append(gap)
        out.append(text, styles[k] if k < len(styles) else "")
        gap = "  "
        if k == 3 and bar_w >= BAR_MIN_W:  # the bar between the step and its percent
            out.append(" ")
            out.append(bar(fraction, bar_w), "green")
            gap = " "
    return out


def failure_text(summary: Any) -> Text | None:
    """What went wrong, in full, for the line under the header: a failed or interrupted run's
    reason, and the watchdog's alert."""
    state = summary.state
    out = Text()
    if state.status in ("failed", "interrupted") and state.failure_reason:
        style = "bold red" if state.status == "failed" else "bold yellow"
        out.append(f"{state.status}: {printable(state.failure_reason)}", style)
    if summary.alert:
        out.append(("\n" if out else "") + f"! {printable(summary.alert)}", "bold red")
    return out or None


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
    mirror = _mirror_text(summary.state) if summary is not None else None
    if mirror is not None:
        out.append(f"\nmirror {mirror}", "red" if summary.state.mirror_error else "")
    return out


def samples_text(samples: list[dict[str, Any]]) -> Text:
    """The newest sample answers: the step, then each prompt and answer (as typed, no markup;
    control characters shown as symbols)."""
    from tui.widgets.eval_view import printable

    out = Text(no_wrap=False)
    if not samples:
        return out
    out.append(f"at step {samples[0].get('step')}", "bold")
    for sample in samples:
        out.append("\nQ ", "bold")
        out.append(printable(sample.get("prompt_text", "")))
        out.append("\nA ", "bold cyan")
        out.append(printable(sample.get("answer", "")))
    return out


def _mirror_text(state: Any) -> str | None:
    from runner.mirror import mirror_text

    return mirror_text(state)


def finish_line(info: Any) -> Text | None:
    """The run's on_finish countdown (or what became of it), None when it has none."""
    from runner.on_finish import finish_text

    words = finish_text(info)
    if words is None:
        return None
    if info.status == "waiting":
        return Text.assemble((words, "bold yellow"), ("  (c cancels)", "yellow"))
    return Text(words, "dim")


class MonitorScreen(Screen[None]):
    """One run, live."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "stop", "stop"),
        Binding("r", "resume", "resume"),
        Binding("c", "cancel_finish", "cancel on-finish", show=False),
        Binding("l", "full_log", "full log"),
        Binding("v", "evaluate", "eval"),
        Binding("slash", "search", "search"),
        Binding("n", "search_next", "next match", show=False),
        Binding("b,escape", "back", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    class Polled(Message):
        def __init__(self, update: FeedUpdate) -> None:
            super().__init__()
            self.update = update

    class SamplesPolled(Message):
        """Sample answers the training wrote since the last poll (train_samples.jsonl)."""

        def __init__(self, records: list[dict[str, Any]], reset: bool) -> None:
            super().__init__()
            self.records = records
            self.reset = reset

    class FinishRead(Message):
        """The run's on-finish.json, read by the poll worker."""

        def __init__(self, info: Any) -> None:
            super().__init__()
            self.info = info

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
        self._samples_tail: Any = None
        self.samples: list[dict[str, Any]] = []
        """The newest step's sample answers."""
        self._finish: Any | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(f"{self.run}  reading…"), id="monitor-header", classes="title-bar")
        yield Static("", id="monitor-warning")
        yield Static("", id="monitor-finish")
        with Horizontal(id="monitor-top"):
            chart = LossChart(id="loss-chart")
            chart.border_title = "loss"
            yield chart
            with Vertical(id="monitor-side"):
                yield Static("", id="monitor-gpus")
                yield Static("", id="monitor-stats")
                yield Static("", id="monitor-samples")
        yield LogPane(id="log-pane")
        yield Input(placeholder="search the log (enter finds, escape cancels)", id="log-search")
        yield Footer()

    def on_mount(self) -> None:
        search = self.query_one("#log-search", Input)
        search.display = False
        self.query_one("#monitor-gpus", Static).border_title = "GPU"
        samples = self.query_one("#monitor-samples", Static)
        samples.border_title = "samples"
        samples.display = False
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
        if self._samples_tail is None and self.feed.run_dir is not None:
            from runner.evaluate import TRAIN_SAMPLES_FILE
            from runner.runs import MetricsTail

            self._samples_tail = MetricsTail(self.feed.run_dir / TRAIN_SAMPLES_FILE)
        if self._samples_tail is not None:
            records = self._samples_tail.read_new()
            if records or self._samples_tail.was_reset:
                self.post_message(self.SamplesPolled(records, self._samples_tail.was_reset))
        if self.summary is not None:
            from runner.on_finish import read_finish

            self.post_message(self.FinishRead(read_finish(self.summary.run_dir)))

    @on(SamplesPolled)
    def _samples_polled(self, message: SamplesPolled) -> None:
        if message.reset:
            self.samples = []
        steps = [r["step"] for r in message.records if isinstance(r.get("step"), int)]
        if steps:
            newest = max(steps)
            self.samples = [r for r in message.records if r.get("step") == newest]
        box = self.query_one("#monitor-samples", Static)
        box.display = bool(self.samples)
        box.update(samples_text(self.samples))

    @on(FinishRead)
    def _finish_read(self, message: FinishRead) -> None:
        self._finish = message.info
        line = finish_line(message.info)
        box = self.query_one("#monitor-finish", Static)
        box.display = line is not None
        box.update(line or "")

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
        lines = [failure_text(self.summary)] if self.summary is not None else []
        warning = self.metrics.eval_rising()
        if warning:
            lines.append(Text("warning: " + warning, "bold yellow"))
        shown = [line for line in lines if line is not None]
        warn = self.query_one("#monitor-warning", Static)
        warn.display = bool(shown)
        warn.update(Text("\n").join(shown))

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
                self.notify(f"not found: {self._search}", severity="warning", markup=False)
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
            self.app.call_from_thread(
                self.notify, "\n".join(exc.lines), severity="error", markup=False
            )
            return
        self.app.call_from_thread(self.notify, "stopping: saving a checkpoint first")

    def action_evaluate(self) -> None:
        self.app.open_eval(self.summary.run_id if self.summary else self.run)  # type: ignore[attr-defined]

    def action_cancel_finish(self) -> None:
        if self._finish is None or self._finish.status != "waiting" or self.summary is None:
            self.notify("no on-finish action is waiting", severity="warning")
            return
        self._cancel_finish(self.summary.run_dir)

    @work(thread=True, group="run-control", exit_on_error=False)
    def _cancel_finish(self, run_dir: Any) -> None:
        from runner.on_finish import cancel
        from runner.runs import RunError

        try:
            cancel(run_dir)
        except RunError as exc:
            self.app.call_from_thread(self.notify, "\n".join(exc.lines), severity="error")
            return
        self.app.call_from_thread(self.notify, "on-finish cancelled")

    def action_resume(self) -> None:
        run_id = self.summary.run_id if self.summary is not None else self.run
        self.app.resume_run(run_id)  # type: ignore[attr-defined]
