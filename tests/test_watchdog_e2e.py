"""The watchdog on real runs of the demo model: an absurd learning rate collapses the training
(or makes it NaN) and the run is stopped with the reason; a trainer frozen by SIGSTOP is reported
stalled by `tunedeck runs` and recovers on SIGCONT; a runs folder on a small filesystem gets the
disk warning before the save that fails."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.checkpoints import inspect_checkpoint, latest_complete
from runner.runs import RunStore, read_metrics, read_state
from runner.watchdog import folder_bytes

sys.path.insert(0, str(Path(__file__).parent))
from test_runner_e2e import finished, launch_json, logged_step, wait_for
from test_runner_robust import ENDLESS, _alive, _gone

pytestmark = pytest.mark.slow


def _runs_json(tunedeck: Any) -> dict[str, Any]:
    out = tunedeck("runs", "--json")
    assert out.returncode == 0, out.stderr
    return {r["run_id"]: r for r in json.loads(out.stdout)["runs"]}


@pytest.mark.parametrize(
    ("rate", "reason"),
    [
        # FACTS.md: at 1e6 the grad norm is exactly 0 and the loss ln(vocab) from a few steps on.
        ("1.0e+6", "watchdog: training collapsed: grad norm exactly 0 for 10 logged steps"),
        # At 1e38 the weights overflow within three steps.
        ("1.0e+38", "watchdog: grad norm is nan at step "),
    ],
)
def test_an_absurd_learning_rate_is_stopped_with_the_reason(
    demo_home: Path, tunedeck: Any, rate: str, reason: str
) -> None:
    run_dir = launch_json(
        tunedeck, "demo", "--name", "absurd", "--auto-resume",
        "--set", f"training.learning_rate={rate}", "--set", "training.eval_strategy='no'",
    )  # fmt: skip
    wait_for(lambda: finished(run_dir), 240, "the run to stop", poll_s=0.2)
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "interrupted", log[-3000:]
    assert state.failure_reason and state.failure_reason.startswith(reason), state.failure_reason
    assert "change the run" in state.failure_reason
    assert state.watchdog_stopped and state.watchdog == state.failure_reason.removeprefix(
        "watchdog: "
    )
    assert state.max_steps is not None and state.step < state.max_steps
    assert inspect_checkpoint(run_dir / "checkpoints" / f"checkpoint-{state.step}").complete
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    if "collapsed" in reason:
        assert [r["grad_norm"] for r in records[-11:-1]] == [0.0] * 10
    else:
        assert "nan" in [r["grad_norm"] for r in records]
    # `runs` says why; autostart leaves the run to a person.
    table = tunedeck("runs")
    assert "interrupted: watchdog: " in table.stdout, table.stdout
    out = tunedeck("resume", "--all-interrupted", "--json")
    assert json.loads(out.stdout)["resumed"] == [], out.stdout


@pytest.fixture
def stoppable(demo_home: Path) -> Iterator[list[int]]:
    """Process groups to SIGCONT and SIGKILL at the end, whatever happened."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)


def test_a_sigstopped_trainer_is_reported_stalled(
    demo_home: Path, tunedeck: Any, stoppable: list[int]
) -> None:
    """A stopped process sees nothing; `runs` judges the stall from its heartbeat against the
    threshold it last wrote (20 x the median step, at least 2 s here)."""
    run_dir = launch_json(
        tunedeck, "demo", "--name", "frozen", *ENDLESS,
        "--set", "launch.watchdog.stall_min_s=2", "--set", "launch.watchdog.ram_warn_pct=0.001",
    )  # fmt: skip
    wait_for(lambda: logged_step(run_dir) >= 5, 240, "some steps", poll_s=0.1)
    state = wait_for(
        lambda: (s := read_state(run_dir)) and s.pgid and s.stall_after_s and s,
        60,
        "the stall threshold",
        poll_s=0.1,
    )
    stoppable.append(state.pgid)
    listed = _runs_json(tunedeck)["frozen"]
    assert listed["status"] == "running"
    assert "host RAM " in listed["alert"], listed["alert"]  # a warning in force
    os.killpg(state.pgid, signal.SIGSTOP)
    stalled = wait_for(
        lambda: "stalled" in (_runs_json(tunedeck)["frozen"]["alert"] or ""), 120, "the stall"
    )
    assert stalled
    run = _runs_json(tunedeck)["frozen"]
    assert run["status"] == "running" and run["alert"].startswith("stalled: no progress for ")
    assert "host RAM" in run["alert"]
    table = tunedeck("runs").stdout
    assert "running: stalled: no progress for" in table, table
    from tui.screens.monitor import failure_text

    shown = failure_text(RunStore(run_dir.parent).get("frozen"))  # the line under the header
    assert shown is not None and "! stalled: no progress for " in shown.plain, shown
    step = logged_step(run_dir)
    os.killpg(state.pgid, signal.SIGCONT)
    wait_for(lambda: logged_step(run_dir) > step + 5, 120, "training to go on")
    wait_for(
        lambda: "stalled" not in (_runs_json(tunedeck)["frozen"]["alert"] or ""),
        120,
        "the stall to clear",
    )


def test_a_small_disk_warns_before_the_save_that_fails(
    demo_home: Path, tmp_path: Path, stoppable: list[int]
) -> None:
    from presets.store import load_preset
    from runner.launch import launch

    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        preset = load_preset(
            "demo",
            ["training.max_steps=200000", "training.save_steps=5", "training.eval_steps=100000"],
        )
        result = launch(mount / "runs", preset, name="tight")
        assert result.pid is not None
        stoppable.append(result.pid)
        first = wait_for(
            lambda: latest_complete(result.run_dir / "checkpoints"), 180, "a checkpoint"
        )
        size = folder_bytes(first.path)
        # Leave half a checkpoint free: the state and the log still fit, the next save does not.
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with (mount / "filler").open("wb") as fh:
            fh.truncate(0)
            fh.write(b"\0" * max(0, free - size // 2))
        _gone(result.pid)
        state = read_state(result.run_dir)
        log = (result.run_dir / "train.log").read_text(errors="replace")
        assert state is not None and state.status == "failed", log[-3000:]
        assert state.failure_reason and "disk full" in state.failure_reason
        assert state.watchdog and state.watchdog.startswith("disk: "), state.watchdog
        assert "the next checkpoint needs about" in state.watchdog
        warned = log.index("tunedeck: watchdog: disk: ")
        assert warned < log.index("Traceback"), "the warning came after the failure"
    finally:
        if "result" in locals() and result.pid and _alive(result.pid):
            os.killpg(result.pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mount)], check=False)
