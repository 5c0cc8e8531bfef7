"""Run monitor over real run folders: metrics and log lines appended after it opened show up,
scroll-back and search reach the start of a long log, warnings and status read as words."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fake_nvml import two_h100s
from test_tui_helpers import make_app, screen_text, shows, wait_for

from runner.runs import RunState, RunStore, now_iso, write_state
from tui.screens.monitor import MonitorScreen
from tui.widgets import run_feed
from tui.widgets.charts import LossChart
from tui.widgets.log_pane import LogPane

pytestmark = pytest.mark.asyncio


def make_run(
    root: Path,
    run_id: str,
    *,
    pid: int | None,
    step: int = 10,
    max_steps: int = 100,
    log_lines: int = 50,
    records: list[dict] | None = None,
) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    write_state(
        run_dir,
        RunState(
            run_id=run_id,
            status="running",
            pid=pid,
            host=socket.gethostname(),
            started_at=now_iso(),
            segment_started_at=now_iso(),
            step=step,
            max_steps=max_steps,
            price_usd_per_h=2.69,
            planned_device_peak_gib=20.0,
        ),
    )
    with (run_dir / "metrics.jsonl").open("w") as fh:
        for rec in records or [{"step": s, "loss": 3.0 - s * 0.01} for s in range(1, step + 1)]:
            fh.write(json.dumps(rec) + "\n")
    with (run_dir / "train.log").open("w") as fh:
        fh.writelines(f"log line {i:06d}\n" for i in range(log_lines))
    return run_dir


@pytest.fixture
def sleeper():
    """A live process standing for the training, so the run reads as running."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


async def test_monitor_shows_metrics_and_log_lines_appended_after_it_opened(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    root = tmp_path / "runs"
    run_dir = make_run(root, "sft-1", pid=sleeper.pid)
    app = make_app(two_h100s(), root, store=RunStore(root), watch_run="sft-1")
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: "log line 000049" in screen_text(app))
        assert await shows(pilot, "loss 2.9", "sft-1", "running", "step 10/100", "plan 20.0 GiB")
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        assert len(screen.metrics.train_loss) == 10

        with (run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": 11, "loss": 1.2345, "peak_gpu_mem_gib": 23.5}) + "\n")
            fh.write(json.dumps({"step": 11, "eval_loss": 1.5}) + "\n")
        with (run_dir / "train.log").open("a") as fh:
            fh.write("appended after open\n")
        assert await shows(
            pilot, "loss 1.23", "appended after open", "eval 1.5", "23.5 GiB measured", "(+18 %)"
        )
        assert len(screen.metrics.train_loss) == 11
        assert screen.metrics.eval_loss.last == 1.5


async def test_log_pane_scrolls_back_to_the_start_and_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Following reads only the last 2 KB (about 110 lines) of the ~1.2 MB log.
    monkeypatch.setattr(run_feed, "FOLLOW_WINDOW_BYTES", 2048)
    root = tmp_path / "runs"
    make_run(root, "long-1", pid=None, log_lines=70_000)
    app = make_app(two_h100s(), root, store=RunStore(root), watch_run="long-1")
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: "log line 069999" in screen_text(app))
        pane = app.screen.query_one(LogPane)
        first_read = pane.lines[0].offset
        assert first_read > 1_000_000  # only the end of the file was read
        # Page up past the top of what was read: older lines are read backwards.
        for _ in range(40):
            await pilot.press("pageup")
            if pane.lines[0].offset < first_read:
                break
        assert await wait_for(pilot, lambda: pane.lines[0].offset < first_read)
        assert len(pane.lines) > 127
        assert await shows(pilot, "scrolled")
        assert "log line 069999" not in screen_text(app)
        # Home jumps to the first line of the file.
        await pilot.press("home")
        assert await wait_for(pilot, lambda: "log line 000000" in screen_text(app))
        # Back to the end: following again.
        await pilot.press("end")
        assert await wait_for(pilot, lambda: "log line 069999" in screen_text(app))
        # Search backwards from the end for an early line.
        await pilot.press("slash", *"line 000123", "enter")
        assert await wait_for(pilot, lambda: "/line 000123" in screen_text(app))
        shown = pane.visible()
        assert shown[0] == "log line 000123" or "log line 000123" in shown


async def test_interrupted_and_rising_eval_read_as_words(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    records = [{"step": s, "loss": 2.0 - s * 0.01} for s in range(1, 31)]
    records += [
        {"step": 10, "eval_loss": 1.90},
        {"step": 20, "eval_loss": 1.95},
        {"step": 30, "eval_loss": 2.05},
    ]
    # A pid that is certainly gone: the run was preempted.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    make_run(root, "pre-1", pid=dead.pid, step=30, records=records)
    app = make_app(two_h100s(), root, store=RunStore(root), watch_run="pre-1")
    async with app.run_test(size=(100, 30)) as pilot:
        assert await shows(pilot, "interrupted", "[r] resumes", "eval loss rising since step 10")
        assert await shows(pilot, "(1.900 → 2.050 at step 30)")
        await pilot.press("s")  # not running: nothing to stop, no dialog
        await pilot.pause()
        assert isinstance(app.screen, MonitorScreen)
        await pilot.press("b")
        assert await wait_for(pilot, lambda: "Runs" in screen_text(app))
        assert await shows(pilot, "pre-1", "interrupted (r)")


async def test_unknown_run_says_so(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    app = make_app(two_h100s(), root, store=RunStore(root), watch_run="nope")
    async with app.run_test(size=(80, 24)) as pilot:
        assert await wait_for(pilot, lambda: "no such run" in screen_text(app))


async def test_chart_draws_100k_points_downsampled(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    records = [
        {"step": s, "loss": 3.0 / (1 + s / 1000), "learning_rate": 1e-4} for s in range(1, 100_001)
    ]
    make_run(root, "big-1", pid=None, step=100_000, max_steps=100_000, records=records)
    app = make_app(two_h100s(), root, store=RunStore(root), watch_run="big-1")
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(
            pilot, lambda: len(app.screen.metrics.train_loss) == 100_000, timeout_s=15
        )
        import time

        chart = app.screen.query_one(LossChart)
        started = time.perf_counter()
        chart.show(app.screen.metrics)
        chart.render()
        assert time.perf_counter() - started < 0.25
        assert "step 100,000/100,000" in screen_text(app)
        _ = os
