"""The tunedeck Textual app.

The app receives its collaborators: a GPU source (`.snapshot()`), a run store (`runner.runs.
RunStore`), a plan function (`planner.plan`) and a clock, so tests hand it a fake NVML and a
temporary runs folder. One thread worker polls GPUs and host once a second; widgets only draw
the newest `Telemetry`. Closing the app never stops a run: runs are detached processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.signal import Signal

from runner.host import HostInfo, host_info
from tui.widgets.telemetry import GpuSourceLike, Telemetry, TelemetryPoller


class TunedeckApp(App[None]):
    """Home, planner, presets, launch and run monitor."""

    CSS_PATH = "app.tcss"
    TITLE = "tunedeck"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "quit", "quit", show=False, priority=True)
    ]

    class TelemetryPolled(Message):
        """A poll from the poller thread."""

        def __init__(self, telemetry: Telemetry) -> None:
            super().__init__()
            self.telemetry = telemetry

    def __init__(
        self,
        gpu_source: GpuSourceLike,
        store: Any | None,
        plan_fn: Callable[[Any], Any] | None,
        clock: Callable[[], float] = time.time,
        *,
        runs_dir: Path | None = None,
        host_probe: Callable[[Path], HostInfo] = host_info,
        watch_run: str | None = None,
        poll_interval_s: float = 1.0,
        cpu_probe: Callable[[], float | None] | None = None,
        store_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.gpu_source = gpu_source
        self._store = store
        # Building the real store imports pydantic (~0.15 s): done off the UI thread, after the
        # first paint, by whichever worker needs it first.
        self._store_factory = store_factory
        self._store_lock = threading.Lock()
        self.plan_fn = plan_fn
        self.clock = clock
        if runs_dir is None:
            runs_dir = Path(store.root) if store is not None else Path.cwd()
        self.runs_dir = runs_dir
        self.watch_run = watch_run
        self.telemetry: Telemetry | None = None
        self.telemetry_signal: Signal[Telemetry] = Signal(self, "telemetry")
        self.poller = TelemetryPoller(
            gpu_source,
            runs_dir,
            interval_s=poll_interval_s,
            host_probe=host_probe,
            clock=clock,
            cpu_probe=cpu_probe,
        )

    @property
    def store(self) -> Any | None:
        """The run store (`runner.runs.RunStore`); None when there is none."""
        if self._store is None and self._store_factory is not None:
            with self._store_lock:
                if self._store is None:
                    self._store = self._store_factory()
        return self._store

    # ------------------------------------------------------------------ lifecycle

    def get_default_screen(self) -> Screen[Any]:
        """The home screen is the app's first screen (not pushed over a blank default one, which
        cost a frame at start-up)."""
        from tui.screens.home import HomeScreen

        return HomeScreen()

    def on_mount(self) -> None:
        if self.watch_run is not None:
            self.open_monitor(self.watch_run)
        self._poll()
        self.call_after_refresh(self._warm_up)

    @work(thread=True, group="warm-up", exit_on_error=False)
    def _warm_up(self) -> None:
        """Import what later screens need while the user reads the first one."""
        _ = self.store

    def on_unmount(self) -> None:
        # The poller thread waits on this event, so quitting is not held up by its 1 s sleep.
        self.poller.stop()

    @work(thread=True, exclusive=True, group="telemetry", exit_on_error=False)
    def _poll(self) -> None:
        self.poller.run(lambda tel: self.post_message(self.TelemetryPolled(tel)))

    @on(TelemetryPolled)
    def _telemetry(self, message: TelemetryPolled) -> None:
        self.telemetry = message.telemetry
        self.telemetry_signal.publish(message.telemetry)

    # ------------------------------------------------------------------ navigation

    # Screens are imported when first opened: the home screen paints without them.

    def open_monitor(self, run_id: str) -> None:
        from tui.screens.monitor import MonitorScreen

        self.push_screen(MonitorScreen(run_id))

    def open_eval(self, run_id: str) -> None:
        from tui.screens.evaluate import EvalScreen

        self.push_screen(EvalScreen(run_id))

    def open_compare(self, run_ids: list[str]) -> None:
        from tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(run_ids))

    def action_open_planner(self) -> None:
        from tui.screens.planner import PlannerScreen

        self.push_screen(PlannerScreen())

    def action_open_presets(self) -> None:
        self.open_presets()

    def open_presets(self, initial: dict[str, Any] | None = None) -> None:
        """The preset editor; `initial` fills the form (a plan turned into a preset)."""
        from tui.screens.presets import PresetsScreen

        self.push_screen(PresetsScreen(initial=initial))

    def action_open_launch(self) -> None:
        self.open_launch()

    def open_launch(self, preset: Any | None = None) -> None:
        """The launch screen, with `preset` already picked when given."""
        from tui.screens.launch import LaunchScreen

        self.push_screen(LaunchScreen(preset))

    # ------------------------------------------------------------------ run actions

    @work(thread=True, group="run-actions", exit_on_error=False)
    def resume_run(self, run_id: str) -> None:
        if self.store is None:
            self.call_from_thread(self.notify, "the run store is not available", severity="error")
            return
        from runner.runs import RunError
        from tui.run_messages import resumed_text

        try:
            result = self.store.resume(run_id)
        except RunError as exc:
            self.call_from_thread(self.notify, "\n".join(exc.lines), severity="error", markup=False)
            return
        start = resumed_text(result.run_id, result.start_step, result.start_checkpoint)
        lines = [start, *result.warnings]
        severity = "warning" if result.warnings else "information"
        self.call_from_thread(self.notify, "\n".join(lines), severity=severity, markup=False)


def _store_factory(runs_dir: str | None) -> Callable[[], Any]:
    def make() -> Any:
        from presets import locations
        from runner.runs import RunStore

        return RunStore(locations.runs_dir(runs_dir))

    return make


def _plan(request: Any) -> Any:
    """`planner.plan`, imported on the first plan (from a worker), not at start-up."""
    from planner import plan

    return plan(request)


def build_app(runs_dir: str | None = None, watch_run: str | None = None) -> TunedeckApp:
    """The app with the real collaborators: NVML, the runs folder, the planner, the wall clock."""
    from presets import locations
    from runner.gpu import GpuSource

    return TunedeckApp(
        GpuSource(),
        None,
        _plan,
        time.time,
        runs_dir=locations.runs_dir(runs_dir),
        watch_run=watch_run,
        store_factory=_store_factory(runs_dir),
    )


def run_app(runs_dir: str | None = None) -> None:
    """Open the app on the home screen (`tunedeck`)."""
    build_app(runs_dir).run()


def run_watch(run: str, runs_dir: str | None = None) -> None:
    """Open the app on the monitor of one run (`tunedeck watch RUN`)."""
    build_app(runs_dir, watch_run=run).run()
