"""What the run monitor reads from a run folder, polled from a worker thread.

One `RunFeed` per monitor: the run's summary (state, cost, ETA), the metrics records appended
since the last poll and the new lines of train.log from the last byte offset. Reading never
loads a whole log: following starts near the end and skips ahead when the log grows faster
than the screen could show.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui.widgets.log_file import LogFile, LogLine

FOLLOW_WINDOW_BYTES = 64 * 1024
CATCH_UP_BYTES = 1024 * 1024  # more new log than this in one poll: jump to the end


@dataclass(frozen=True)
class FeedUpdate:
    summary: Any | None = None
    """`runner.runs.RunSummary`, or None when not read this time."""
    error: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    metrics_reset: bool = False
    """The metrics file was replaced (a resume): `records` is the whole history."""
    log_lines: list[LogLine] = field(default_factory=list)
    log_pending: str = ""
    """An unfinished last line (a progress bar being drawn)."""
    log_reset: bool = False
    """`log_lines` replace what the pane holds (first read, skipped ahead, or a new file)."""
    run_dir: Path | None = None


def _window_bytes() -> int:
    return FOLLOW_WINDOW_BYTES


class RunFeed:
    """Reads one run folder incrementally. Call `poll()` from a worker thread only."""

    def __init__(self, store: Any, run: str) -> None:
        self.store = store
        self.run = run
        self.run_dir: Path | None = None
        self.log: LogFile | None = None
        self._metrics: Any = None
        self._log_offset: int | None = None
        self._log_inode: int | None = None
        self._lock = threading.Lock()

    def _open(self) -> str | None:
        from runner.runs import LOG_FILE, METRICS_FILE, MetricsTail, RunError

        try:
            self.run_dir = Path(self.store.resolve(self.run))
        except RunError as exc:
            return "\n".join(exc.lines)
        self.log = LogFile(self.run_dir / LOG_FILE)
        self._metrics = MetricsTail(self.run_dir / METRICS_FILE)
        return None

    def poll(self, with_summary: bool = True) -> FeedUpdate:
        with self._lock:
            if self.run_dir is None:
                error = self._open()
                if error is not None:
                    return FeedUpdate(error=error)
            assert self.run_dir is not None and self.log is not None
            summary = None
            error = None
            if with_summary:
                from runner.runs import RunError

                try:
                    summary = self.store.get(str(self.run_dir))
                except RunError as exc:
                    error = "\n".join(exc.lines)
            records = self._metrics.read_new()
            metrics_reset = bool(self._metrics.was_reset)
            lines, pending, log_reset = self._read_log()
            return FeedUpdate(
                summary, error, records, metrics_reset, lines, pending, log_reset, self.run_dir
            )

    def _read_log(self) -> tuple[list[LogLine], str, bool]:
        log = self.log
        assert log is not None
        size = log.size()
        inode = log.inode()
        reset = False
        if (
            self._log_offset is None
            or inode != self._log_inode
            or size < self._log_offset
            or size - self._log_offset > CATCH_UP_BYTES
        ):
            # Read through the module so tests can shrink the window.
            self._log_offset = log.tail_start(_window_bytes())
            self._log_inode = inode
            reset = True
        lines, end, pending = log.read_forward(self._log_offset, CATCH_UP_BYTES)
        self._log_offset = end
        return lines, pending, reset

    def reset_log(self) -> None:
        """Follow again from near the end (after the pane scrolled far back)."""
        with self._lock:
            self._log_offset = None
