"""SVG snapshots of the main screens at 100x30 (and home at 80x24), from fixed run folders and a
fake NVML so they read the same on every machine. Update with `pytest --snapshot-update` after
a deliberate change, and look at the report before accepting it."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
from fake_nvml import FakeGpu, FakeNvml, two_h100s
from test_tui_helpers import make_app, screen_text, wait_for
from textual.widgets import Input

from planner import plan
from runner.runs import RunState, RunStore, write_state

STARTED = "2026-11-22T09:30:00+00:00"
# One GPU poll only (the first, at start-up): a second one arriving before the picture is
# taken would add a bar to the sparklines.
FROZEN = 3600.0


def fixed_runs(root: Path) -> None:
    """Four runs, one of each status; nothing in them depends on the time now."""
    runs = [
        RunState(
            run_id="qlora-llama8b-20261122-0930",
            status="running",
            pid=os.getpid(),  # this test process: alive for as long as the snapshot takes
            host=socket.gethostname(),
            started_at=STARTED,
            step=1840,
            max_steps=None,
        ),
        RunState(
            run_id="dpo-qwen7b-20261121-2210",
            status="interrupted",
            started_at="2026-11-21T22:10:00+00:00",
            ended_at="2026-11-21T23:40:00+00:00",
            step=900,
            max_steps=3000,
            price_usd_per_h=2.69,
            active_s=5400,
        ),
        RunState(
            run_id="demo-20261121-1800",
            status="completed",
            started_at="2026-11-21T18:00:00+00:00",
            ended_at="2026-11-21T18:01:00+00:00",
            step=60,
            max_steps=60,
            price_usd_per_h=0.0,
            active_s=58,
            planned_device_peak_gib=1.2,
        ),
        RunState(
            run_id="full-1b-20261120-1200",
            status="failed",
            failure_reason="out of memory at step 3",
            started_at="2026-11-20T12:00:00+00:00",
            ended_at="2026-11-20T12:05:00+00:00",
            step=3,
            max_steps=500,
            price_usd_per_h=1.1,
            active_s=300,
        ),
    ]
    for state in runs:
        run_dir = root / state.run_id
        run_dir.mkdir(parents=True)
        write_state(run_dir, state)
    demo = root / "demo-20261121-1800"
    with (demo / "metrics.jsonl").open("w") as fh:
        for step in range(1, 61):
            rec = {
                "step": step,
                "loss": 6.3 - 0.7 * (1 - math.exp(-step / 20)) + 0.05 * math.sin(step),
                "learning_rate": 0.002 * (1 + math.cos(math.pi * step / 60)) / 2,
                "grad_norm": 0.45,
                "epoch": step / 80,
                "tokens_per_s": 3210,
                "peak_gpu_mem_gib": 1.3,
            }
            fh.write(json.dumps(rec) + "\n")
        for step, ev in ((20, 5.9), (40, 5.7), (60, 5.65)):
            fh.write(json.dumps({"step": step, "eval_loss": ev}) + "\n")
    with (demo / "train.log").open("w") as fh:
        for step in range(45, 61):
            fh.write(f"{{'loss': '5.6{step % 10}', 'grad_norm': '0.45', 'epoch': '{step / 80}'}}\n")
        fh.write("Saving checkpoint to checkpoints/checkpoint-60\n")
        fh.write("training finished: 60 steps\n")


async def settled(pilot, *texts: str) -> None:
    assert await wait_for(
        pilot, lambda: all(t in screen_text(pilot.app) for t in texts), timeout_s=10
    ), f"never showed {texts}"
    # A focused Input's cursor blinks every 0.5 s; hold it on so the picture does not depend on
    # when it was taken.
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause(0.2)


def test_home_100x30(snap_compare, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fixed_runs(root)
    app = make_app(two_h100s(), root, store=RunStore(root), poll_interval_s=FROZEN)

    async def ready(pilot) -> None:
        await settled(pilot, "GPU 1", "full-1b-20261120-1200", "interrupted")

    assert snap_compare(app, terminal_size=(100, 30), run_before=ready)


def test_home_80x24_without_gpu(snap_compare, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fixed_runs(root)
    app = make_app(FakeNvml([]), root, store=RunStore(root), poll_interval_s=FROZEN)

    async def ready(pilot) -> None:
        await settled(pilot, "no NVIDIA GPU found", "failed", "interrupted")

    assert snap_compare(app, terminal_size=(80, 24), run_before=ready)


def test_monitor_100x30(snap_compare, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fixed_runs(root)
    app = make_app(
        two_h100s(),
        root,
        store=RunStore(root),
        watch_run="demo-20261121-1800",
        poll_interval_s=FROZEN,
    )

    async def ready(pilot) -> None:
        await settled(pilot, "training finished", "completed", "GPU 1", "loss 5.6")

    assert snap_compare(app, terminal_size=(100, 30), run_before=ready)


def test_planner_100x30(snap_compare, tmp_path: Path) -> None:
    nvml = FakeNvml(
        [FakeGpu(name="NVIDIA GeForce RTX 4090", total_gib=23.99, compute_capability=(8, 9))]
    )
    app = make_app(nvml, tmp_path / "runs", plan_fn=plan, poll_interval_s=FROZEN)

    async def ready(pilot) -> None:
        await settled(pilot, "GPU 0")
        await pilot.press("p")
        await settled(pilot, "does not fit", "fix:")

    assert snap_compare(app, terminal_size=(100, 30), run_before=ready)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEDECK_HOME", str(tmp_path / "home"))
