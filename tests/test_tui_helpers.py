"""Shared helpers of the app tests (no tests here): building the app over a fake NVML and a
temporary runs folder, and reading the screen as plain text."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fake_nvml import FakeNvml
from rich.console import Console

from runner.gpu import GpuSource
from runner.host import HostInfo
from tui.app import TunedeckApp


def fixed_host(path: Path) -> HostInfo:
    """A host that reads the same on every machine, for snapshots."""
    return HostInfo(
        hostname="gpu-box-7",
        cpu_model="AMD EPYC 9654",
        cpu_cores_logical=64,
        cpu_cores_physical=32,
        ram_total_bytes=503 * 1024**3,
        ram_available_bytes=412 * 1024**3,
        disk_path="/workspace/runs",
        disk_total_bytes=2048 * 1024**3,
        disk_free_bytes=1200 * 1024**3,
    )


def make_app(
    nvml: FakeNvml,
    runs_dir: Path,
    store: Any | None = None,
    plan_fn: Any | None = None,
    **kwargs: Any,
) -> TunedeckApp:
    kwargs.setdefault("host_probe", fixed_host)
    kwargs.setdefault("cpu_probe", lambda: 12.0)
    return TunedeckApp(GpuSource(nvml=nvml), store, plan_fn, runs_dir=runs_dir, **kwargs)


def screen_text(app: TunedeckApp) -> str:
    """What the terminal shows now, as plain text."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, force_terminal=True
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def wait_for(pilot: Any, predicate: Any, timeout_s: float = 10.0) -> bool:
    """Let the app run until `predicate()` is true (False after `timeout_s`). The timeout is
    only how long to wait before calling it a failure: a loaded machine can take seconds for
    what is instant on a quiet one (the first validation imports the schema, for one)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await pilot.pause(0.05)
    return bool(predicate())


async def shows(pilot: Any, *texts: str, timeout_s: float = 10.0) -> bool:
    """Wait until every one of `texts` is on the screen (a widget's new text can take a
    refresh or two to reach the screen)."""
    return await wait_for(
        pilot, lambda: all(t in screen_text(pilot.app) for t in texts), timeout_s=timeout_s
    )
