"""`launch.on_finish`: once a run has completed or failed, wait `launch.on_finish_grace_s`, then
power the box off (`shutdown`) or run a shell command, unless cancelled: a box that has finished
stops billing.

Who runs it: a small detached waiter, `python -m runner.on_finish RUN_DIR`, started by the
training process as it ends (in a session of its own, so neither torchrun's shutdown of its
workers nor a `tunedeck stop` of the run's process group reaches it). The training process
cannot own the wait: it is ending, and it holds the run's lock, which must drop for the run to
count as finished. The waiter first waits for that lock to drop (the mirror has then caught up
and the last notification has gone out), then counts down. Cancelling writes `cancel-finish`
into the run folder (`tunedeck cancel-finish RUN`, `c` in the app's monitor); a run resumed
during the countdown cancels it too.

The waiter is the only writer of `on-finish.json`, which viewers read for the countdown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from runner import run_lock
from runner.runs import (
    ACTIVE,
    CONFIG_FILE,
    FINISHED,
    LOG_FILE,
    RunError,
    now_iso,
    parse_iso,
    read_state,
    write_atomic,
)

FINISH_FILE = "on-finish.json"
CANCEL_FILE = "cancel-finish"
POLL_S = 0.2
# The waiter gives up on a training process that has not exited after this long.
TRAINER_EXIT_S = 600.0
# `cancel` waits this long for the waiter to confirm.
CANCEL_CONFIRM_S = 10.0

FinishStatus = Literal["waiting", "cancelled", "running", "done", "failed"]


class FinishState(BaseModel):
    """What `on-finish.json` holds."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    action: str
    """`shutdown` or the shell command."""
    status: FinishStatus = "waiting"
    """waiting (the countdown, or the trainer still exiting), cancelled, running, done, failed."""
    run_status: str
    """How the run ended: completed or failed."""
    due_at: str | None = None
    """When the action runs (ISO 8601, UTC); None until the training process has exited."""
    pid: int | None = None
    """The waiter's pid."""
    detail: str | None = None
    """Who cancelled it, or the command's exit code."""


def settings(run_dir: Path) -> tuple[str, float] | None:
    """The run's `launch.on_finish` action and grace period, None for `none` (or no config)."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    launch = data.get("launch") if isinstance(data, dict) else None
    if not isinstance(launch, dict):
        return None
    action = launch.get("on_finish")
    grace = launch.get("on_finish_grace_s", 120.0)
    if not isinstance(action, str) or action.strip() in ("", "none"):
        return None
    return action.strip(), float(grace) if isinstance(grace, (int, float)) else 120.0


def read_finish(run_dir: Path) -> FinishState | None:
    """The run's on-finish state, None when there is none (or it cannot be read)."""
    try:
        return FinishState.model_validate_json((run_dir / FINISH_FILE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValidationError, ValueError):
        return None


def finish_text(info: FinishState | None, now_s: float | None = None) -> str | None:
    """The on-finish state in words, for the app and `runs`; None when there is nothing."""
    if info is None:
        return None
    what = "shutdown" if info.action == "shutdown" else f"`{info.action}`"
    if info.status == "waiting":
        due = parse_iso(info.due_at)
        if due is None:
            return f"on finish: {what} once the trainer has exited"
        now_s = time.time() if now_s is None else now_s
        left = max(0, int(due - now_s))
        return f"on finish: {what} in {left // 60}m{left % 60:02d}s"
    if info.status == "cancelled":
        return f"on finish: {what} cancelled" + (f" ({info.detail})" if info.detail else "")
    if info.status == "running":
        return f"on finish: {what} running"
    return f"on finish: {what} {info.status}" + (f" ({info.detail})" if info.detail else "")


def start_waiter(run_dir: Path) -> int | None:
    """Start the detached waiter for a run that has just ended; its pid, or None when the run
    has no on_finish action."""
    if settings(run_dir) is None:
        return None
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
    }
    log_fd = os.open(run_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.on_finish", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            cwd=run_dir,
            env=env,
            start_new_session=True,
            close_fds=True,  # the run's lock stays with the trainer, which is leaving
        )
    finally:
        os.close(log_fd)
    return proc.pid


def cancel(run_dir: Path) -> FinishState:
    """Cancel a waiting on_finish action and return its state once the waiter has confirmed.
    RunError when nothing is waiting."""
    info = read_finish(run_dir)
    if info is None or info.status != "waiting":
        now = f" (it is {info.status})" if info else ""
        raise RunError([f"{run_dir.name}: no on_finish action is waiting{now}"])
    try:
        write_atomic(run_dir / CANCEL_FILE, now_iso() + "\n")
    except OSError as exc:
        raise RunError([f"{run_dir}: cannot write {CANCEL_FILE} ({exc.strerror})"]) from None
    deadline = time.monotonic() + CANCEL_CONFIRM_S
    while time.monotonic() < deadline:
        info = read_finish(run_dir)
        if info is not None and info.status != "waiting":
            break
        if info is not None and info.pid is not None and not _alive(info.pid):
            raise RunError([f"{run_dir.name}: its on_finish waiter is gone; nothing will run"])
        time.sleep(POLL_S)
    if info is None or info.status != "cancelled":
        said = info.status if info else "unknown"
        raise RunError([f"{run_dir.name}: on_finish was not cancelled (it is {said})"])
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def shutdown_command() -> list[str]:
    """Powering the box off: directly as root, else through sudo without a password prompt."""
    command = ["shutdown", "-h", "now"]
    return command if os.geteuid() == 0 else ["sudo", "-n", *command]


# ---------------------------------------------------------------- the waiter


class _Waiter:
    def __init__(self, run_dir: Path, action: str, run_status: str):
        self.run_dir = run_dir
        self.info = FinishState(action=action, run_status=run_status, pid=os.getpid())

    def write(self, **changes: object) -> None:
        self.info = self.info.model_copy(update=changes)
        write_atomic(self.run_dir / FINISH_FILE, self.info.model_dump_json(indent=2) + "\n")

    def called_off(self, trainer_may_hold_lock: bool) -> str | None:
        """Why the action must not run any more, if it must not."""
        cancel = self.run_dir / CANCEL_FILE
        if cancel.exists():
            cancel.unlink(missing_ok=True)
            return "cancelled by the user"
        state = read_state(self.run_dir)
        if state is None or state.status in ACTIVE:
            return "the run was resumed" if state else "the run's state is gone"
        if not trainer_may_hold_lock and run_lock.is_held(self.run_dir):
            return "the run was resumed"
        return None


def _say(message: str) -> None:
    print(f"tunedeck: on_finish: {message}", flush=True)


def run_waiter(run_dir: Path) -> int:
    configured = settings(run_dir)
    state = read_state(run_dir)
    if configured is None or state is None or state.status not in FINISHED:
        return 0
    action, grace_s = configured
    (run_dir / CANCEL_FILE).unlink(missing_ok=True)  # left from an earlier end of the run
    waiter = _Waiter(run_dir, action, state.status)
    waiter.write()
    deadline = time.monotonic() + TRAINER_EXIT_S
    while run_lock.is_held(run_dir) and time.monotonic() < deadline:
        why = waiter.called_off(trainer_may_hold_lock=True)
        if why:
            waiter.write(status="cancelled", detail=why)
            _say(f"{action}: {why}")
            return 0
        time.sleep(POLL_S)
    if run_lock.is_held(run_dir):
        waiter.write(status="failed", detail="the training process did not exit")
        return 1
    due_s = time.monotonic() + grace_s
    waiter.write(due_at=_iso_in(grace_s))
    _say(f"{action} in {grace_s:g} s unless cancelled (tunedeck cancel-finish {run_dir.name})")
    while True:
        why = waiter.called_off(trainer_may_hold_lock=False)
        if why:
            waiter.write(status="cancelled", detail=why)
            _say(f"{action}: {why}")
            return 0
        if time.monotonic() >= due_s:
            break
        time.sleep(min(POLL_S, max(0.0, due_s - time.monotonic())))
    waiter.write(status="running")
    return _run_action(waiter, action, state.status)


def _iso_in(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="seconds")


def _run_action(waiter: _Waiter, action: str, run_status: str) -> int:
    from runner.redact import redact, secret_values

    run_dir = waiter.run_dir
    env = {
        **os.environ,
        "TUNEDECK_RUN_ID": run_dir.name,
        "TUNEDECK_RUN_DIR": str(run_dir),
        "TUNEDECK_RUN_STATUS": run_status,
    }
    command = shutdown_command() if action == "shutdown" else ["/bin/sh", "-c", action]
    _say(f"running {action}")
    try:
        done = subprocess.run(
            command, cwd=run_dir, env=env, capture_output=True, text=True, errors="replace"
        )
    except OSError as exc:
        waiter.write(status="failed", detail=f"cannot run it ({exc.strerror})")
        _say(f"{action}: cannot run it ({exc.strerror})")
        return 1
    output = redact(done.stdout + done.stderr, secret_values())
    if output:
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
    status = "done" if done.returncode == 0 else "failed"
    waiter.write(status=status, detail=f"exit {done.returncode}")
    _say(f"{action}: exit {done.returncode}")
    return 0 if done.returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m runner.on_finish RUN_DIR", file=sys.stderr)
        return 2
    return run_waiter(Path(argv[0]).resolve())


if __name__ == "__main__":
    sys.exit(main())
