"""The watchdog's judgements without a training: collapse and non-finite values, the stall seen
from inside and from the heartbeat, idle GPUs (over the fake NVML: this machine has no GPU), the
disk before a save and the host's RAM, and how a summary shows them."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from presets.schema import WatchdogSpec
from runner.gpu import GpuSource
from runner.runs import RunState, summarize, write_state
from runner.watchdog import FINDINGS_JOIN, Watchdog, stall_reason

sys.path.insert(0, str(Path(__file__).parent))
from fake_nvml import FakeGpu, FakeNvml


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class Recorder:
    """What the watchdog reports: state changes, log lines and stop requests."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.said: list[str] = []
        self.stops: list[str] = []

    def report(self, **fields: Any) -> None:
        self.state.update(fields)


def make(tmp_path: Path, gpus: Any = None, **spec: Any) -> tuple[Watchdog, Recorder, Clock]:
    rec, clock = Recorder(), Clock()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    dog = Watchdog(
        WatchdogSpec(**spec),
        checkpoints,
        report=rec.report,
        say=rec.said.append,
        request_stop=rec.stops.append,
        gpus=gpus,
        clock=clock,
    )
    return dog, rec, clock


def test_grad_norm_exactly_zero_for_n_logged_steps_stops(tmp_path: Path) -> None:
    dog, rec, _ = make(tmp_path, collapse_steps=4)
    losses = [6.1, 6.5, 6.238, 6.2381, 6.2379, 6.2382]
    for step, loss in enumerate(losses, start=1):
        dog.logged(step, {"loss": loss, "grad_norm": 0.0 if step >= 3 else 0.7})
    assert rec.stops == ["watchdog: " + rec.state["watchdog"]]
    assert "grad norm exactly 0 for 4 logged steps (to step 6" in rec.stops[0]
    dog.logged(7, {"loss": 1.0, "grad_norm": float("nan")})
    assert len(rec.stops) == 1  # one stop per segment


def test_an_unchanged_loss_stops_and_a_moving_one_does_not(tmp_path: Path) -> None:
    dog, rec, _ = make(tmp_path, collapse_steps=3)
    for step in range(1, 20):
        dog.logged(step, {"loss": 2.0 + (step % 2) * 1e-5, "grad_norm": 0.1})
    dog.logged(20, {"eval_loss": 2.0})  # evaluation records do not count
    assert rec.stops == []
    for step in range(21, 24):
        dog.logged(step, {"loss": 0.0, "grad_norm": 0.1})
    assert rec.stops == []  # two unchanged steps after the first 0.0
    dog.logged(24, {"loss": 0.0 + 5e-7, "grad_norm": 0.1})
    assert len(rec.stops) == 1 and "loss unchanged at 0.000000 for 3 logged steps" in rec.stops[0]


@pytest.mark.parametrize("key", ["loss", "grad_norm"])
def test_a_non_finite_value_stops_at_once(tmp_path: Path, key: str) -> None:
    dog, rec, _ = make(tmp_path)
    dog.logged(1, {"loss": 2.0, "grad_norm": 1.0})
    dog.logged(2, {"loss": 2.0, "grad_norm": 1.0, key: float("inf")})
    assert len(rec.stops) == 1 and "is inf at step 2" in rec.stops[0]


def test_a_stall_is_found_from_inside_and_clears_with_the_next_step(tmp_path: Path) -> None:
    dog, rec, clock = make(tmp_path, stall_factor=10, stall_min_s=5)
    dog.training_started()
    assert dog.stall_after_s() == 15  # before the pace is known: three times the minimum
    for step in range(1, 12):
        clock.now_s += 2.0
        dog.step_ended(step)
    assert dog.stall_after_s() == 20  # 10 x the median step time of 2 s
    assert dog.heartbeat_fields() == {"stall_after_s": 20}
    assert dog.heartbeat_fields() == {}  # written once until it moves
    clock.now_s += 19
    dog.tick()
    assert "watchdog" not in rec.state
    clock.now_s += 2
    dog.tick()
    assert rec.state["watchdog"].startswith("stalled: no progress for 21 s")
    assert rec.said[-1].startswith("watchdog: stalled")
    dog.step_ended(12)
    assert rec.state["watchdog"] is None and "cleared" in rec.said[-1]


def test_a_save_that_grows_is_progress(tmp_path: Path) -> None:
    dog, rec, clock = make(tmp_path, stall_factor=2, stall_min_s=1)
    dog.training_started()
    folder = tmp_path / "checkpoints" / "checkpoint-5"
    folder.mkdir()
    dog.saving(folder)
    for i in range(5):
        clock.now_s += 2.5
        (folder / f"shard-{i}").write_bytes(b"x" * 1000)
        assert dog.tick() is True  # the caller writes a heartbeat
    assert "watchdog" not in rec.state
    clock.now_s += 5
    assert dog.tick() is False
    assert "stalled" in rec.state["watchdog"]


def test_idle_gpus_warn_after_gpu_idle_s(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(util_pct=0), FakeGpu(util_pct=0)])
    dog, rec, clock = make(tmp_path, gpus=GpuSource(nvml=nvml), gpu_idle_s=120)
    dog.training_started()
    dog.tick()
    clock.now_s += 119
    dog.tick()
    assert "watchdog" not in rec.state
    clock.now_s += 2
    dog.tick()
    assert rec.state["watchdog"] == "GPU 0 at 0 % utilisation for 2m01s"  # the run's GPU only
    nvml.gpus[0].util_pct = 85
    dog.tick()
    assert rec.state["watchdog"] is None
    nvml.gpus[0].util_pct = 0
    clock.now_s += 60
    dog.tick()
    assert rec.state["watchdog"] is None  # idle again, but not for long yet


def test_disk_warning_before_a_save_that_would_not_fit(tmp_path: Path, monkeypatch: Any) -> None:
    import shutil
    from collections import namedtuple

    dog, rec, _ = make(tmp_path, disk_margin=1.5)
    first = tmp_path / "checkpoints" / "checkpoint-5"
    first.mkdir()
    (first / "model.safetensors").write_bytes(b"\0" * 4 * 2**20)
    dog.saving(first)
    assert "watchdog" not in rec.state  # no size known before the first checkpoint
    dog.saved(first)
    assert dog.checkpoint_bytes == 4 * 2**20
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 2**20, 0, 5 * 2**20))
    dog.saving(first.parent / "checkpoint-10")
    text = rec.state["watchdog"]
    assert text.startswith("disk: 5.0 MiB free, the next checkpoint needs about 4.0 MiB")
    assert "(checkpoint-5)" in text
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 2**20, 0, 7 * 2**20))
    dog.tick()
    assert rec.state["watchdog"] is None


def test_ram_warning_from_the_real_host(tmp_path: Path) -> None:
    dog, rec, _ = make(tmp_path, ram_warn_pct=0.001)  # any real machine uses more than that
    dog.tick()
    assert rec.state["watchdog"].startswith("host RAM ")
    dog.spec = WatchdogSpec(ram_warn_pct=100)
    dog.tick()
    assert rec.state["watchdog"] is None


def _iso(seconds_ago: float) -> str:
    when = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return when.isoformat(timespec="seconds")


def test_viewers_judge_a_stall_from_the_heartbeat(tmp_path: Path) -> None:
    state = RunState(
        run_id="r",
        status="running",
        steps_started_at=_iso(100),
        progress_at=_iso(30),
        stall_after_s=20.0,
        watchdog="stalled: no progress for 21 s" + FINDINGS_JOIN + "host RAM 97 % in use",
    )
    assert (stall_reason(state) or "").startswith("stalled: no progress for 3")
    assert stall_reason(state.model_copy(update={"progress_at": _iso(5)})) is None
    assert stall_reason(state.model_copy(update={"status": "interrupted"})) is None
    assert stall_reason(state.model_copy(update={"steps_started_at": None})) is None
    # A summary of a live run carries the judgement, and the trainer's older stall line once.
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    write_state(run_dir, state)
    alert = summarize(run_dir, state.model_copy(update={"pid": None})).alert
    assert alert is None  # no process left: interrupted, nothing to judge
    import os

    live = state.model_copy(update={"pid": os.getpid(), "pid_start_ticks": None})
    alert = summarize(run_dir, live).alert or ""
    assert alert.count("stalled") == 1 and alert.endswith("host RAM 97 % in use")


def test_every_viewer_shows_the_reason(tmp_path: Path) -> None:
    """`runs` (its table row), the monitor (`watch` and the app: the line under its header)
    and the app's list."""
    from runner.runs import RunSummary
    from tui.commands.run_cmd import _row
    from tui.screens.home import run_row, runs_layout
    from tui.screens.monitor import failure_text

    live = RunState(run_id="r", status="running", step=5, max_steps=10)
    warned = RunSummary("r", tmp_path, live, alert="stalled: no progress for 7m12s")
    assert _row(warned)["status"] == "running: stalled: no progress for 7m12s"
    shown = failure_text(warned)
    assert shown is not None and "! stalled: no progress for 7m12s" in shown.plain
    layout = runs_layout([warned], 100)
    assert run_row(warned, layout)[1].plain == "running !"
    quiet = RunSummary("r", tmp_path, live)
    assert _row(quiet)["status"] == "running" and failure_text(quiet) is None
    stopped = live.model_copy(
        update={"status": "interrupted", "failure_reason": "spot notice (aws), 120 s"}
    )
    summary = RunSummary("r", tmp_path, stopped)
    assert _row(summary)["status"] == "interrupted: spot notice (aws), 120 s"
    shown = failure_text(summary)
    assert shown is not None and "interrupted: spot notice (aws), 120 s" in shown.plain
