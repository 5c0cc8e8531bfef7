"""Notifications and the on-finish action, on real runs of the demo model: apprise's `json://`
messages reach a receiver on 127.0.0.1 for a completed, a failed and an interrupted run; the
on_finish command runs after its grace period, and cancelling it (CLI, the app's `c` key) stops
it. `shutdown` itself is never run here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runner import on_finish
from runner.notify import notify_event
from runner.runs import RunState, now_iso, parse_iso, read_state, write_state

sys.path.insert(0, str(Path(__file__).parent))
from test_runner_e2e import launch_json, wait_for


class Receiver:
    """An HTTP server on 127.0.0.1 keeping every JSON body POSTed to it."""

    def __init__(self, delay_s: float = 0.0):
        self.messages: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if delay_s:
                    time.sleep(delay_s)
                receiver.messages.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # a quiet test log

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def about(self, word: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if word in m.get("title", "")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


SHORT = ["--set", "training.max_steps=6", "--set", "training.save_steps=3"]


@pytest.mark.slow
def test_a_completed_run_notifies_then_runs_on_finish_after_the_grace(
    demo_home: Path, tunedeck: Any, receiver: Receiver, tmp_path: Path
) -> None:
    marker = tmp_path / "finished.txt"
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "done",
        *SHORT,
        "--set",
        "price_usd_per_h=3600",
        "--set",
        f"launch.notify=['{receiver.url('runs')}']",
        "--set",
        f"launch.on_finish=echo $TUNEDECK_RUN_STATUS > {marker}",
        "--set",
        "launch.on_finish_grace_s=2",
    )
    (message,) = wait_for(lambda: receiver.about("completed"), 180, "the completed message")
    assert message["path"] == "/runs" and message["type"] == "success"
    body = message["message"]
    assert "run done completed at step 6/6" in body
    assert "loss " in body and "elapsed " in body and "spent $" in body
    wait_for(marker.exists, 120, "the on_finish command")
    assert marker.read_text().strip() == "completed"
    info = on_finish.read_finish(run_dir)
    assert info is not None and info.status == "done" and info.detail == "exit 0"
    state = read_state(run_dir)
    assert state is not None and state.status == "completed"
    due, ended = parse_iso(info.due_at), parse_iso(state.ended_at)
    assert due is not None and ended is not None and due - ended >= 2 - 1  # ISO seconds
    assert marker.stat().st_mtime >= due - 1
    assert "on_finish: echo" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_a_failed_run_notifies_with_its_reason_and_runs_on_finish(
    demo_home: Path, tunedeck: Any, receiver: Receiver, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_home / "data" / "demo" / "model", model)
    # Pre-flight sees a whole model folder; the trainer cannot build an unknown architecture.
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    marker = tmp_path / "failed.txt"
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "broken",
        "--set",
        f"model={model}",
        "--set",
        f"launch.notify=['{receiver.url('x')}']",
        "--set",
        f"launch.on_finish=echo $TUNEDECK_RUN_STATUS > {marker}",
        "--set",
        "launch.on_finish_grace_s=0.5",
    )
    (message,) = wait_for(lambda: receiver.about("failed"), 180, "the failed message")
    assert message["type"] == "failure"
    state = read_state(run_dir)
    assert state is not None and state.status == "failed" and state.failure_reason
    assert state.failure_reason.splitlines()[0][:60] in message["message"]
    wait_for(marker.exists, 120, "the on_finish command")
    assert marker.read_text().strip() == "failed"


@pytest.mark.slow
def test_an_interrupted_run_notifies_and_leaves_on_finish_alone(
    demo_home: Path, tunedeck: Any, receiver: Receiver, tmp_path: Path
) -> None:
    marker = tmp_path / "never.txt"
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "cut",
        "--set",
        "training.max_steps=200000",
        "--set",
        "training.save_steps=5",
        "--set",
        "training.eval_steps=100000",
        "--set",
        f"launch.notify=['{receiver.url('x')}']",
        "--set",
        f"launch.on_finish=touch {marker}",
        "--set",
        "launch.on_finish_grace_s=0",
    )
    wait_for(lambda: (s := read_state(run_dir)) and s.step >= 3, 180, "some training")
    out = tunedeck("stop", "cut")
    assert out.returncode == 0, out.stderr
    (message,) = wait_for(lambda: receiver.about("interrupted"), 60, "the interrupted message")
    assert message["type"] == "warning"
    assert "stopped with tunedeck stop" in message["message"]
    state = read_state(run_dir)
    assert state is not None and state.status == "interrupted"
    assert f"at step {state.step}" in message["message"]
    assert on_finish.read_finish(run_dir) is None and not marker.exists()


@pytest.mark.slow
def test_cancel_finish_from_the_cli_stops_it(
    demo_home: Path, tunedeck: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "never.txt"
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "keep",
        *SHORT,
        "--set",
        f"launch.on_finish=touch {marker}",
        "--set",
        "launch.on_finish_grace_s=600",
    )
    info = wait_for(
        lambda: (i := on_finish.read_finish(run_dir)) and i.due_at and i,
        180,
        "the countdown",
        poll_s=0.2,
    )
    assert info.status == "waiting" and info.pid and _alive(info.pid)
    listed = tunedeck("runs")
    assert "on finish: `touch" in listed.stdout, listed.stdout
    refused = tunedeck("stop", "keep")
    assert refused.returncode == 2 and "tunedeck cancel-finish keep" in refused.stderr
    out = tunedeck("cancel-finish", "keep")
    assert out.returncode == 0, out.stderr
    assert "on_finish cancelled" in out.stdout
    after = on_finish.read_finish(run_dir)
    assert after is not None and after.status == "cancelled"
    assert after.detail == "cancelled by the user"
    wait_for(lambda: not _alive(info.pid), 30, "the waiter to leave")
    assert not marker.exists()
    again = tunedeck("cancel-finish", "keep")
    assert again.returncode == 2 and "no on_finish action is waiting" in again.stderr
    assert "Traceback" not in again.stderr


# ---------------------------------------------------------------- without training


def finished_run(root: Path, run_id: str, launch: dict[str, Any]) -> Path:
    """A run folder as a run that has just completed leaves it (no trainer holds its lock)."""
    from presets.store import load_preset, preset_to_yaml

    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    overrides = [f"launch.{key}={json.dumps(value)}" for key, value in launch.items()]
    preset = load_preset("demo", overrides)
    (run_dir / "config.yaml").write_text(preset_to_yaml(preset))
    write_state(
        run_dir,
        RunState(
            run_id=run_id,
            status="completed",
            host=socket.gethostname(),
            started_at=now_iso(),
            ended_at=now_iso(),
            step=80,
            max_steps=80,
            active_s=65,
            price_usd_per_h=2.5,
        ),
    )
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 80, "loss": 1.25}) + "\n")
    return run_dir


def test_notify_event_for_other_events_and_variables(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECEIVER_PORT", str(receiver.port))
    run_dir = finished_run(
        tmp_path,
        "ev",
        {"notify": ["json://127.0.0.1:${RECEIVER_PORT}/hook", "json://127.0.0.1/${NOT_SET}"]},
    )
    started = time.monotonic()
    sending = notify_event(run_dir, "watchdog", "grad norm 0.0 for 50 logged steps")
    assert sending is not None and time.monotonic() - started < 2  # it sends in the background
    sending.join(30)
    (message,) = receiver.about("watchdog")
    assert message["path"] == "/hook" and message["type"] == "info"
    body = message["message"]
    assert "run ev watchdog at step 80/80" in body and "loss 1.2500" in body
    assert "elapsed 1m05s, spent $0.05" in body and body.endswith("for 50 logged steps")
    assert notify_event(finished_run(tmp_path, "quiet", {}), "completed") is None


def test_a_receiver_that_never_answers_costs_only_its_timeouts(tmp_path: Path) -> None:
    import runner.notify as notify

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never reads or answers
    try:
        port = silent.getsockname()[1]
        run_dir = finished_run(tmp_path, "slow", {"notify": [f"json://127.0.0.1:{port}/"]})
        started = time.monotonic()
        sending = notify_event(run_dir, "completed")
        assert sending is not None and time.monotonic() - started < 2
        sending.join(60)
        assert not sending.is_alive()
        limit_s = notify.CONNECT_TIMEOUT_S + notify.READ_TIMEOUT_S + 5
        assert time.monotonic() - started < limit_s
    finally:
        silent.close()


def test_on_finish_waiter_runs_its_command_after_the_grace(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    run_dir = finished_run(
        tmp_path, "w", {"on_finish": f"echo $TUNEDECK_RUN_ID > {marker}", "on_finish_grace_s": 1}
    )
    started = time.monotonic()
    pid = on_finish.start_waiter(run_dir)
    assert pid is not None
    wait_for(marker.exists, 60, "the command")
    assert time.monotonic() - started >= 1
    assert marker.read_text().strip() == "w"
    wait_for(lambda: (i := on_finish.read_finish(run_dir)) and i.status == "done", 30, "done")
    assert on_finish.shutdown_command()[-3:] == ["shutdown", "-h", "now"]
    assert on_finish.start_waiter(finished_run(tmp_path, "none", {})) is None


@pytest.mark.asyncio
async def test_the_monitor_shows_the_countdown_and_c_cancels_it(tmp_path: Path) -> None:
    from fake_nvml import two_h100s
    from test_tui_helpers import make_app, screen_text, shows
    from test_tui_helpers import wait_for as app_wait_for

    from runner.runs import RunStore

    root = tmp_path / "runs"
    # The command runs in the run folder: a short one, so the line fits the screen.
    run_dir = finished_run(root, "app", {"on_finish": "touch never.txt", "on_finish_grace_s": 300})
    marker = run_dir / "never.txt"
    pid = on_finish.start_waiter(run_dir)
    assert pid is not None
    try:
        wait_for(lambda: (i := on_finish.read_finish(run_dir)) and i.due_at, 60, "the countdown")
        app = make_app(two_h100s(), root, store=RunStore(root), watch_run="app")
        async with app.run_test(size=(100, 30)) as pilot:
            assert await shows(pilot, "on finish: `touch", "in 4m", "(c cancels)"), screen_text(app)
            await pilot.press("c")
            assert await app_wait_for(
                pilot,
                lambda: (
                    (i := on_finish.read_finish(run_dir)) is not None and i.status == "cancelled"
                ),
                timeout_s=20,
            )
            assert await shows(pilot, "cancelled (cancelled by the user)")
        wait_for(lambda: not _alive(pid), 30, "the waiter to leave")
        assert not marker.exists()
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
