"""The app in a real terminal (tmux) over a real demo run: the monitor shows the newest loss
within 2 s of it reaching metrics.jsonl, and q leaves the training running. And a new user's
first minute: a fresh home, the app opened, enter, and the demo training in the monitor."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from runner.runs import MetricsTail, RunStore, effective_status, read_state
from tui.widgets.format import number

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")

SHOW_WITHIN_S = 2.0


def _has_demo_command() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    return " demo " in out.stdout or "│ demo" in out.stdout


class Tmux:
    """One private tmux server (its own socket), one window (100x30 unless told)."""

    def __init__(self, name: str, width: int = 100, height: int = 30) -> None:
        self.socket = f"tunedeck-test-{os.getpid()}-{name}"
        self.session = name
        self.width, self.height = width, height

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        return subprocess.run(
            [TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        out = self.run(
            "new-session", "-d", "-s", self.session, "-x", str(self.width), "-y", str(self.height),
            f"env {exports} {command}",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.session).returncode == 0

    def kill(self) -> None:
        self.run("kill-server")


def test_monitor_in_a_real_terminal_follows_a_real_run(tmp_path: Path, demo_home: Path) -> None:
    if not _has_demo_command():
        pytest.skip("`tunedeck demo` is not available")
    home = demo_home  # the demo model and data, built once per session (conftest)
    runs = tmp_path / "runs"
    env = {**os.environ, "TUNEDECK_HOME": str(home)}
    env.pop("TUNEDECK_RUNS", None)
    # Long enough to still be training when the app quits; stopped at the end.
    launched = subprocess.run(
        [
            sys.executable, "-m", "tui.cli", "demo", "--json", "--runs-dir", str(runs),
            "--set", "training.max_steps=3000", "--set", "training.save_steps=1000",
            "--set", "training.eval_steps=1000",
        ],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    run_id = json.loads(launched.stdout)["run_id"]
    run_dir = runs / run_id
    store = RunStore(runs)
    tmux = Tmux("watch")
    try:
        term_env = {"TUNEDECK_HOME": str(home), "TERM": "xterm-256color", "COLUMNS": "100"}
        tmux.start(
            f"{sys.executable} -m tui.cli watch {run_id} --runs-dir {runs}",
            {**term_env, "PATH": os.environ.get("PATH", "")},
        )
        deadline = time.monotonic() + 60
        while run_id not in tmux.screen():
            assert tmux.alive(), "the app exited"
            assert time.monotonic() < deadline, tmux.screen()
            time.sleep(0.1)

        tail = MetricsTail(run_dir / "metrics.jsonl")
        records: list[dict] = []
        checked = 0
        while checked < 3:
            assert time.monotonic() < deadline, "the demo run logged no loss"
            new = [r for r in tail.read_new() if "loss" in r]
            if not new:
                time.sleep(0.05)
                continue
            written_s = min(time.time(), (run_dir / "metrics.jsonl").stat().st_mtime)
            records += new
            target_step = new[-1]["step"]
            # The newest loss, or one newer still when training outran the check.
            while True:
                records += [r for r in tail.read_new() if "loss" in r]
                wanted = {f"loss {number(r['loss'])} " for r in records if r["step"] >= target_step}
                screen = tmux.screen()
                if any(w in screen for w in wanted):
                    break
                late_s = time.time() - written_s
                assert late_s < SHOW_WITHIN_S, (
                    f"step {target_step} written {late_s:.1f} s ago, not on screen:\n{screen}"
                )
                time.sleep(0.05)
            checked += 1

        # q leaves the app; the training goes on without it.
        step_at_quit = read_state(run_dir).step
        tmux.run("send-keys", "-t", tmux.session, "q")
        quit_deadline = time.monotonic() + 10
        while tmux.alive() and time.monotonic() < quit_deadline:
            time.sleep(0.1)
        assert not tmux.alive(), "the app did not quit on q"
        state = read_state(run_dir)
        assert state is not None and state.pid is not None
        assert psutil.pid_exists(state.pid)
        assert effective_status(state) == "running"
        later = time.monotonic() + 20
        while read_state(run_dir).step <= step_at_quit and time.monotonic() < later:
            time.sleep(0.2)
        assert read_state(run_dir).step > step_at_quit, "training stopped when the app quit"
    finally:
        tmux.kill()
        summary = store.get(run_id)
        if summary.state.status in ("running", "stopping"):
            store.stop(run_id, now=True)


FIRST_RUN_S = 300  # building the demo and starting its training, on a loaded box


def poll_screen(tmux: Tmux, found: Any, timeout_s: float, what: str) -> str:
    """The screen once `found(screen)` holds; fails with the screen after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        screen = tmux.screen()
        if found(screen):
            return screen
        assert tmux.alive(), f"the app exited while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s:\n{screen}"
        time.sleep(0.2)


@pytest.mark.parametrize("size", [(100, 30), (80, 24)])
def test_first_minute_enter_starts_the_demo_and_shows_it(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    home = tmp_path / "fresh-home"  # nothing in it: no runs, no demo files
    tmux = Tmux(f"first-{size[0]}", *size)
    try:
        env = {
            "TUNEDECK_HOME": str(home),
            "TERM": "xterm-256color",
            "PATH": os.environ.get("PATH", ""),
        }
        tmux.start(f"{sys.executable} -m tui.cli", env)
        poll_screen(tmux, lambda s: "press enter to try the demo" in s, 60, "offer of the demo")
        tmux.run("send-keys", "-t", tmux.session, "Enter")
        # The monitor of the demo run, training: its step counter past 0 or a loss on screen.
        trained = re.compile(r"step [1-9][0-9]*/80|loss [0-9]")
        screen = poll_screen(
            tmux, lambda s: "demo-" in s and trained.search(s), FIRST_RUN_S, "demo training"
        )
        assert "could not start" not in screen
        (run_dir,) = (home / "runs").iterdir()
        assert run_dir.name in screen
    finally:
        tmux.kill()
        store = RunStore(home / "runs")
        for summary in store.list():
            if summary.state.status in ("running", "stopping"):
                store.stop(summary.run_id, now=True)
