"""The app's one GPU and host poller: a loop run in a thread worker, one snapshot a second.

The loop never touches widgets; it hands each `Telemetry` to a callback that posts a message to
the app. GPU history (utilisation and memory per GPU) is kept here so the run monitor has a curve
as soon as it opens.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from runner.gpu import GpuSnapshot
from runner.host import HostInfo, host_info

HISTORY_POINTS = 600  # ten minutes at 1 Hz


class GpuSourceLike(Protocol):
    def snapshot(self) -> GpuSnapshot: ...


@dataclass(frozen=True)
class Telemetry:
    """One poll: every GPU, the host and the CPU load since the previous poll."""

    snapshot: GpuSnapshot
    host: HostInfo
    cpu_pct: float | None
    taken_at: float
    poll_s: float
    """How long the GPU poll took; a slow NVML shows here, never in the UI thread."""
    util_history: dict[int, tuple[float, ...]] = field(default_factory=dict)
    """Per GPU index: recent utilisation in %, oldest first (a copy, safe to read anywhere)."""
    mem_history_gib: dict[int, tuple[float, ...]] = field(default_factory=dict)
    """Per GPU index: recent memory used in GiB, oldest first."""


@dataclass
class GpuHistory:
    """Recent utilisation (%) and memory used (GiB) of one GPU, oldest first."""

    util_pct: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    mem_used_gib: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))


def _cpu_percent() -> float:
    """CPU use since the previous call, all cores (psutil keeps the previous sample)."""
    return psutil.cpu_percent(interval=None)


class TelemetryPoller:
    """Polls `gpu_source` and the host every `interval_s` until `stop()`."""

    def __init__(
        self,
        gpu_source: GpuSourceLike,
        disk_path: Path,
        interval_s: float = 1.0,
        host_probe: Callable[[Path], HostInfo] = host_info,
        clock: Callable[[], float] = time.time,
        cpu_probe: Callable[[], float | None] | None = None,
    ) -> None:
        self.gpu_source = gpu_source
        self.cpu_probe = cpu_probe or _cpu_percent
        self.disk_path = disk_path
        self.interval_s = interval_s
        self.host_probe = host_probe
        self.clock = clock
        self.history: dict[int, GpuHistory] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def poll_once(self) -> Telemetry:
        started = time.monotonic()
        snap = self.gpu_source.snapshot()
        poll_s = time.monotonic() - started
        host = self.host_probe(self.disk_path)
        cpu = self.cpu_probe()
        for gpu in snap.gpus:
            hist = self.history.setdefault(gpu.index, GpuHistory())
            hist.util_pct.append(float(gpu.utilization_pct or 0))
            used = gpu.memory_used_bytes
            hist.mem_used_gib.append(used / 1024**3 if used is not None else 0.0)
        return Telemetry(
            snap,
            host,
            cpu,
            self.clock(),
            poll_s,
            util_history={i: tuple(h.util_pct) for i, h in self.history.items()},
            mem_history_gib={i: tuple(h.mem_used_gib) for i, h in self.history.items()},
        )

    def run(self, publish: Callable[[Telemetry], None]) -> None:
        """Poll until stopped, publishing each result; ticks stay on a fixed 1 s grid even when a
        poll is slow (a slow poll delays only itself)."""
        next_tick = time.monotonic()
        while not self._stop.is_set():
            publish(self.poll_once())
            next_tick += self.interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # the poll took longer than the interval: start again from now
                next_tick = time.monotonic()
                delay = 0.0
            if self._stop.wait(delay):
                return
