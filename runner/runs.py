"""Run folders: the one contract between a training process and everything that looks at it.

A run lives in `<runs root>/<run id>/`:

- `config.yaml`   the resolved preset as launched; never changed afterwards;
- `state.json`    `RunState`, always replaced atomically (a reader sees the old or the new file);
- `metrics.jsonl` one JSON object per trainer log event, each with `step`;
- `train.log`     stdout and stderr of the training processes;
- `checkpoints/checkpoint-N/` and `output/`;
- `trainer.lock`  held by the run's one training process for its whole life (`runner.run_lock`);
- `stop-requested` written by `tunedeck stop` before it signals the run;
- `eval.json`, `samples.jsonl`, `eval.log` written by `tunedeck eval` (`runner.evaluate`);
- `train_samples.jsonl` sample answers written during training (`evaluation.samples_every_steps`).
- `on-finish.json` the `launch.on_finish` countdown, written only by its waiter
  (`runner.on_finish`), and `cancel-finish`, written by `tunedeck cancel-finish` to call it off.

With `launch.mirror`, a copy of the small files and the checkpoints is kept off the box
(`runner.mirror`), from which `tunedeck resume --from` rebuilds the folder (`runner.mirror_fetch`).

Viewers (the CLI, the app, a later login on a new box) only read these files. A state that says
`running` whose process is gone (killed, rebooted box, another machine's volume) is reported as
`interrupted`: see `effective_status`. Every file here is read back as possibly damaged: a
state.json that cannot be read is reported (and recovered from config.yaml and the checkpoints),
not skipped.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from presets.schema import Preset
    from runner.launch import LaunchResult, Preflight

RunStatus = Literal["running", "stopping", "interrupted", "completed", "failed"]
ACTIVE: tuple[str, ...] = ("running", "stopping")
FINISHED: tuple[str, ...] = ("completed", "failed")

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
CHECKPOINTS_DIR = "checkpoints"
OUTPUT_DIR = "output"
STOP_REQUEST_FILE = "stop-requested"
# A little disk kept in reserve so that the run's last state can still be written on a full disk.
RESERVE_FILE = ".tunedeck-reserve"
RESERVE_BYTES = 256 * 1024

# A run on another machine (shared volume) is believed alive while its heartbeat is this fresh.
REMOTE_STALE_S = 600.0
# A run folder whose process has not been recorded yet counts as starting for this long.
STARTING_S = 30.0
# Tail of metrics.jsonl read for a summary; enough for thousands of records.
SUMMARY_TAIL_BYTES = 256 * 1024


class RunError(Exception):
    """A refusal or a problem with a run; `lines` are the messages, one each."""

    def __init__(self, lines: list[str] | str):
        lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(lines))
        self.lines = lines


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_iso(value: str | None) -> float | None:
    """Seconds since the epoch for an ISO time, None when missing or unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def boot_id() -> str | None:
    """This boot of this machine (Linux); a pid recorded under another boot is long gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


class RunState(BaseModel):
    """What `state.json` holds. Written by the launcher before the process starts and by rank 0
    of the training afterwards; never by viewers, except `stop --now` once the process is dead."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    run_id: str
    """Folder name of the run."""
    status: RunStatus = "running"
    """running, stopping (SIGTERM seen, checkpointing), interrupted, completed or failed."""
    pid: int | None = None
    """Pid of the process group leader (`runner.train` or torchrun)."""
    pgid: int | None = None
    """Process group of the training; `stop` signals the whole group."""
    host: str | None = None
    """Hostname the training runs (or ran) on."""
    started_at: str | None = None
    """When the run was first launched (ISO 8601, UTC)."""
    ended_at: str | None = None
    """When the last segment ended (None while running)."""
    step: int = 0
    """Last optimizer step finished."""
    max_steps: int | None = None
    """Total optimizer steps planned (known once the trainer has been built)."""
    resumes: int = 0
    """How many times the run was resumed."""
    exit_code: int | None = None
    """Exit code of the last segment's process."""
    failure_reason: str | None = None
    """Why it failed, in one line (with the fix for an out-of-memory)."""
    preset_name: str | None = None
    method: str | None = None
    trainer: str | None = None
    num_gpus: int = 1
    price_usd_per_h: float | None = None
    """What the box costs per hour, for the cost figures."""
    planned_device_peak_gib: float | None = None
    """The planner's device peak for this run's method (None when not planned)."""
    fit_check: str | None = None
    """The planner's verdict at launch, e.g. `fits`, `forced`, `no GPU: not checked`."""
    fix: str | None = None
    """The planner's cheapest change that makes the run fit, after an out-of-memory."""

    # Bookkeeping for liveness, elapsed time and resume.
    boot_id: str | None = None
    pid_create_time: float | None = None
    """Start time of `pid` (psutil), to tell our process from a reused pid."""
    pid_start_ticks: int | None = None
    """Start of `pid` in clock ticks since boot (/proc/PID/stat): unlike `pid_create_time` it
    does not move when the wall clock is stepped."""
    updated_at: str | None = None
    """Heartbeat: last write by the training process."""
    segment_started_at: str | None = None
    """When the current (or last) segment started: the launch or the latest resume."""
    segment_start_step: int = 0
    """Step the current segment started from (the resumed checkpoint's step)."""
    active_s: float = 0.0
    """Seconds trained in segments that have ended (downtime between segments excluded)."""
    resumed_from: str | None = None
    """Checkpoint folder the current segment resumed from."""
    auto_resume: bool = False
    """Whether `tunedeck resume --all-interrupted` (autostart) picks this run up."""
    steps_started_at: str | None = None
    """When the first step of the current segment began (after loading); paces the ETA."""
    checkpoint_step: int | None = None
    """Step of the newest checkpoint written."""
    stopped_by_user: bool = False
    """The last interruption was `tunedeck stop` (autostart leaves such runs alone)."""
    peak_gpu_mem_gib: float | None = None
    """Peak GPU memory allocated by torch on rank 0 during the last segment."""
    watchdog: str | None = None
    """The watchdog's findings in force, ` | `-separated (`runner.watchdog`); written by the
    training process."""
    watchdog_stopped: bool = False
    """The watchdog stopped the last segment (collapse, non-finite values): autostart leaves the
    run to a person, who changes it before resuming."""
    preemption: str | None = None
    """The cloud's newest word to this machine: a spot notice or a rebalance recommendation."""
    progress_at: str | None = None
    """Last sign of progress (a step, an evaluation batch, a checkpoint growing), for the stall
    judgement of `runner.watchdog.stall_reason`."""
    stall_after_s: float | None = None
    """Seconds without progress after which the run counts as stalled, at its measured pace."""

    # The off-box mirror (`launch.mirror`); written only by the training's uploader thread.
    mirror_url: str | None = None
    """Where the run is mirrored: `<launch.mirror>/<run id>`."""
    mirror_step: int | None = None
    """Step of the newest checkpoint complete on the mirror (its manifest written)."""
    mirror_at: str | None = None
    """When that checkpoint's upload finished."""
    mirror_error: str | None = None
    """Why the last upload failed, in one line (cleared by the next one that succeeds)."""


# ---------------------------------------------------------------- state.json


def write_atomic(path: Path, text: str, durable: bool = True, mode: int = 0o600) -> None:
    """Replace `path` by `text` so a reader sees the whole old or the whole new file.
    `durable` also fsyncs the file and its folder (so the rename survives a power cut);
    heartbeats skip it (losing one to a power cut does not matter)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened for that."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the file itself was flushed
    finally:
        os.close(dir_fd)


def make_reserve(run_dir: Path) -> None:
    """Set aside a little disk for the run's last words (see `write_state`)."""
    try:
        fd = os.open(run_dir / RESERVE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * RESERVE_BYTES)
    except OSError:
        pass  # without a reserve a full disk may keep the last state unwritten, nothing worse


def write_state(
    run_dir: Path | str, state: RunState, durable: bool = True, spend_reserve: bool = True
) -> None:
    """Write `state.json` atomically (owner-only permissions). On a full disk the run's reserve
    file is given up so that this write (the one that says why the run ended) still lands;
    `spend_reserve=False` keeps it for that write (a warning must not use it up)."""
    run_dir = Path(run_dir)
    text = state.model_dump_json(indent=2) + "\n"
    try:
        write_atomic(run_dir / STATE_FILE, text, durable)
    except OSError as exc:
        reserve = run_dir / RESERVE_FILE
        if exc.errno != errno.ENOSPC or not reserve.exists() or not spend_reserve:
            raise
        reserve.unlink()
        write_atomic(run_dir / STATE_FILE, text, durable)


def read_state(run_dir: Path | str) -> RunState | None:
    """The run's state, or None when the file is missing or unreadable."""
    return read_state_checked(run_dir)[0]


def read_state_checked(run_dir: Path | str) -> tuple[RunState | None, str | None]:
    """The run's state and, when it cannot be had, what is wrong with state.json."""
    path = Path(run_dir) / STATE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "state.json is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"state.json cannot be read ({exc})"
    try:
        return RunState.model_validate_json(text), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "the file"
        return None, f"state.json is damaged ({where}: {first.get('msg', 'invalid')})"
    except ValueError as exc:
        return None, f"state.json is damaged ({exc})"


def recovered_state(run_dir: Path, problem: str) -> RunState:
    """A stand-in state for a run whose state.json is damaged, from what else the folder holds
    (config.yaml, the checkpoints): shown as interrupted, so that it can be resumed."""
    import yaml

    from runner import checkpoints as ckpt

    preset_name = method = trainer = None
    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None  # the config has its own check when the run is resumed
    if isinstance(data, dict):
        preset_name, method, trainer = (
            data[k] if isinstance(data.get(k), str) else None for k in ("name", "method", "trainer")
        )
    latest = ckpt.latest_complete(run_dir / CHECKPOINTS_DIR)
    return RunState(
        run_id=run_dir.name,
        status="interrupted",
        step=latest.step if latest else 0,
        checkpoint_step=latest.step if latest else None,
        preset_name=preset_name,
        method=method,
        trainer=trainer,
        failure_reason=f"{problem}; resume rewrites it from the checkpoints",
    )


# Held around every read-modify-write of state.json: the launcher and the training process both
# update it, and an unlocked read-change-write of one would drop the other's fields.
STATE_LOCK_FILE = ".state.lock"


def update_state(
    run_dir: Path | str, durable: bool = True, spend_reserve: bool = True, **changes: Any
) -> RunState | None:
    """Read, change and write back the state under the state lock; None when there is no
    readable state (or the run folder is gone)."""
    import fcntl

    run_dir = Path(run_dir)
    try:
        lock_fd = os.open(run_dir / STATE_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        state = read_state(run_dir)
        if state is None:
            return None
        new = RunState.model_validate({**state.model_dump(), **changes})
        write_state(run_dir, new, durable=durable, spend_reserve=spend_reserve)
        return new
    finally:
        os.close(lock_fd)


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat): the same
    number for the life of the process, whatever happens to the wall clock."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(state: RunState, run_dir: Path | None = None) -> bool | None:
    """Whether the run's process still exists: True, False, or None when it cannot be told
    from here (another machine whose heartbeat is recent, or a process still starting).

    On this machine the run's lock decides (held for the trainer's life, dropped by the kernel
    when it ends). Runs without a lock file fall back to the pid, checked against its start in
    clock ticks since boot; no wall-clock comparison is involved either way."""
    if state.host and state.host != socket.gethostname():
        beat = parse_iso(state.updated_at) or parse_iso(state.segment_started_at)
        if beat is not None and time.time() - beat < REMOTE_STALE_S:
            return None
        return False
    current_boot = boot_id()
    if state.boot_id and current_boot and state.boot_id != current_boot:
        return False
    if run_dir is not None:
        from runner import run_lock

        held = run_lock.is_held(run_dir)
        if held is not None:
            return held
    if state.pid is None:
        # Between the launcher's first write and the process start: give it a moment.
        began = parse_iso(state.segment_started_at)
        return None if began is not None and time.time() - began < STARTING_S else False
    import psutil  # light, already a dependency; imported here to keep the module lean

    try:
        proc = psutil.Process(state.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if state.pid_start_ticks is not None:
        return process_start_ticks(state.pid) == state.pid_start_ticks
    if state.pid_create_time is not None:
        try:
            return abs(proc.create_time() - state.pid_create_time) < 1.0
        except psutil.Error:
            return False
    return True


def effective_status(state: RunState, run_dir: Path | None = None) -> RunStatus:
    """The status as a viewer should show it: `running`/`stopping` with no process left is
    `interrupted`."""
    if state.status in ACTIVE and process_alive(state, run_dir) is False:
        return "interrupted"
    return state.status


def record_step(record: dict[str, Any]) -> int | None:
    """The `step` of a metrics record, None when it is missing or not a whole number."""
    value = record.get("step")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() and value >= 0 else None


# ---------------------------------------------------------------- metrics.jsonl


class MetricsTail:
    """Reads the records appended to a metrics.jsonl since the previous call.

    Only complete lines are returned (a line being written is kept for the next call); a file
    that does not exist yet reads as empty. When the file shrank or was replaced (a resume drops
    the records past its checkpoint), reading starts over and `was_reset` is True for that call:
    a viewer should then drop what it had and take the returned records as the whole history.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.offset = 0
        self.was_reset = False
        self._inode: int | None = None
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        self.was_reset = False
        try:
            st = self.path.stat()
        except OSError:
            return []
        if (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.offset:
            self.offset, self._partial, self.was_reset = 0, b"", True
        self._inode = st.st_ino
        if st.st_size == self.offset:
            return []
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(st.st_size - self.offset)
        except OSError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended on a newline
        return [r for r in (_parse_record(line) for line in lines) if r is not None]


def _parse_record(line: bytes) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None  # a torn line left by a hard kill; the resume truncates it away
    return value if isinstance(value, dict) else None


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """Every complete record of a metrics.jsonl (empty when missing)."""
    return MetricsTail(path).read_new()


def _tail_records(path: Path, max_bytes: int = SUMMARY_TAIL_BYTES) -> list[dict[str, Any]]:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first line is cut by the window
    if not data.endswith(b"\n"):
        lines = lines[:-1]
    return [r for r in (_parse_record(line) for line in lines) if r is not None]


# ---------------------------------------------------------------- summaries


@dataclass(frozen=True)
class RunSummary:
    """One run as the lists show it; `state.status` is already the effective status."""

    run_id: str
    run_dir: Path
    state: RunState
    last_loss: float | None = None
    last_eval_loss: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    """Seconds spent training, over all segments."""
    eta_s: float | None = None
    """Seconds left at the current segment's pace (None when not running or unknown)."""
    cost_usd: float | None = None
    projected_cost_usd: float | None = None
    alert: str | None = None
    """What is wrong with a live run: a stall judged from its heartbeat, or the watchdog's
    findings."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "status": self.state.status,
            "step": self.state.step,
            "max_steps": self.state.max_steps,
            "last_loss": self.last_loss,
            "last_eval_loss": self.last_eval_loss,
            "tokens_per_s": self.tokens_per_s,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
            "cost_usd": self.cost_usd,
            "projected_cost_usd": self.projected_cost_usd,
            "alert": self.alert,
            "state": self.state.model_dump(mode="json"),
        }


def summarize(run_dir: Path, state: RunState, now_s: float | None = None) -> RunSummary:
    """A summary from the state and the tail of the metrics."""
    now_s = time.time() if now_s is None else now_s
    status = effective_status(state, run_dir)
    if status != state.status:
        state = state.model_copy(update={"status": status})
    records = _tail_records(run_dir / METRICS_FILE)
    last_loss = next((r["loss"] for r in reversed(records) if _num(r.get("loss"))), None)
    last_eval = next((r["eval_loss"] for r in reversed(records) if _num(r.get("eval_loss"))), None)
    tps = next((r["tokens_per_s"] for r in reversed(records) if _num(r.get("tokens_per_s"))), None)

    seg_start = parse_iso(state.segment_started_at) or parse_iso(state.started_at)
    pace_start = parse_iso(state.steps_started_at) or seg_start
    seg_end = now_s if status in ACTIVE else parse_iso(state.ended_at)
    if status not in ACTIVE and seg_end is None:
        # Killed without a word: the last heartbeat is the best guess of when it stopped.
        seg_end = parse_iso(state.updated_at)
    segment_s = max(0.0, seg_end - seg_start) if seg_start and seg_end else 0.0
    # A finished segment's time is already folded into active_s by the training process.
    ended_cleanly = status not in ACTIVE and state.ended_at is not None
    elapsed_s = state.active_s + (0.0 if ended_cleanly else segment_s)

    eta_s: float | None = None
    steps_done = state.step - state.segment_start_step
    pace_s = now_s - pace_start if pace_start else 0.0
    step_s = measured_step_s(records, seg_start)
    if status in ACTIVE and state.max_steps:
        if step_s is not None:
            eta_s = max(0, state.max_steps - state.step) * step_s
        elif steps_done > 0 and pace_s > 0:
            eta_s = max(0, state.max_steps - state.step) * pace_s / steps_done
    cost = projected = None
    if state.price_usd_per_h is not None:
        cost = elapsed_s / 3600.0 * state.price_usd_per_h
        if eta_s is not None:
            projected = (elapsed_s + eta_s) / 3600.0 * state.price_usd_per_h
        elif status == "completed":
            projected = cost
    return RunSummary(
        run_id=state.run_id,
        run_dir=run_dir,
        state=state,
        last_loss=last_loss,
        last_eval_loss=last_eval,
        tokens_per_s=tps,
        elapsed_s=elapsed_s,
        eta_s=eta_s,
        cost_usd=cost,
        projected_cost_usd=projected,
        alert=_alert(state, status, now_s),
    )


def _alert(state: RunState, status: str, now_s: float) -> str | None:
    from runner.watchdog import FINDINGS_JOIN, stall_reason

    if status not in ACTIVE:
        return None
    stall = stall_reason(state, now_s)
    # The trainer's own stall finding says less than the one judged here, now.
    found = [f for f in (state.watchdog or "").split(FINDINGS_JOIN) if f]
    found = [f for f in found if not (stall and f.startswith("stalled"))]
    return FINDINGS_JOIN.join([stall, *found] if stall else found) or None


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The ETA is paced by the steps logged after this many in a segment (the first steps carry the
# warm-up: allocator growth, kernel selection, the first data batches) ...
WARMUP_RECORDS = 2
# ... over at most this many of the latest records, so a change of pace shows soon.
PACE_RECORDS = 50


def measured_step_s(records: list[dict[str, Any]], segment_start_s: float | None) -> float | None:
    """Seconds per optimizer step measured between the training records of the current segment
    (their `wall_time`), leaving out the first ones; None until there are enough."""
    points = []
    for record in records:
        step, wall = record_step(record), record.get("wall_time")
        if step is None or not _num(wall) or "loss" not in record:
            continue
        if segment_start_s is not None and wall < segment_start_s:
            continue
        points.append((step, float(wall)))
    points = points[WARMUP_RECORDS:][-PACE_RECORDS:]
    if len(points) < 2:
        return None
    (step0, wall0), (step1, wall1) = points[0], points[-1]
    if step1 <= step0 or wall1 < wall0:
        return None
    return (wall1 - wall0) / (step1 - step0)


# ---------------------------------------------------------------- the store


class RunStore:
    """The runs under one root folder."""

    def __init__(self, root: Path | str | None = None):
        if root is None:
            from presets import locations

            root = locations.runs_dir()
        self.root = Path(root).expanduser()

    def _run_dirs(self) -> list[Path]:
        try:
            children = list(self.root.iterdir())
        except OSError:
            return []
        return [p for p in children if is_run_dir(p)]

    def list(self) -> list[RunSummary]:
        """Every run, newest first; a run whose state.json is damaged is listed with a stand-in
        state saying so (see `recovered_state`), never left out."""
        out: list[RunSummary] = []
        for run_dir in self._run_dirs():
            out.append(self._summary(run_dir))
        out.sort(key=lambda s: (s.state.started_at or "", s.run_id), reverse=True)
        return out

    def _summary(self, run_dir: Path) -> RunSummary:
        state, problem = read_state_checked(run_dir)
        if state is None:
            state = recovered_state(run_dir, problem or "state.json is unreadable")
            if process_alive(state, run_dir):
                state = state.model_copy(update={"status": "running"})
        return summarize(run_dir, state)

    def resolve(self, run_id_or_dir: str | Path) -> Path:
        """The folder of a run given its id (under the root) or a path to its folder."""
        text = str(run_id_or_dir)
        candidates = [self.root / text]
        if os.sep in text or Path(text).is_absolute() or text.startswith("."):
            candidates.insert(0, Path(text).expanduser())
        for cand in candidates:
            if is_run_dir(cand):
                return cand
        # A unique prefix is enough, as with git hashes.
        matches = [p for p in self._run_dirs() if p.name.startswith(text)] if text else []
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(sorted(p.name for p in self._run_dirs())[:10]) or "none"
        if len(matches) > 1:
            names = ", ".join(sorted(p.name for p in matches))
            raise RunError([f"{text}: several runs start with this: {names}"])
        raise RunError([f"{text}: no such run under {self.root}; runs there: {known}"])

    def get(self, run_id_or_dir: str | Path) -> RunSummary:
        """One run's summary (a damaged state.json as in `list`); RunError when there is no
        such run."""
        return self._summary(self.resolve(run_id_or_dir))

    # Launching and control live in runner.launch; imported on use.

    def preflight(self, preset: Preset) -> Preflight:
        from runner.launch import preflight

        return preflight(preset)

    def launch(
        self,
        preset: Preset,
        name: str | None = None,
        force: bool = False,
        auto_resume: bool | None = None,
    ) -> LaunchResult:
        from runner.launch import launch

        return launch(self.root, preset, name=name, force=force, auto_resume=auto_resume)

    def stop(self, run_id: str, now: bool = False) -> RunSummary:
        from runner.launch import stop

        stop(self.resolve(run_id), now=now)
        return self.get(run_id)

    def resume(self, run_id: str) -> LaunchResult:
        from runner.launch import resume

        return resume(self.resolve(run_id))


def is_run_dir(path: Path) -> bool:
    """A run folder holds a state.json, or at least the config.yaml written before it."""
    return path.is_dir() and ((path / STATE_FILE).is_file() or (path / CONFIG_FILE).is_file())


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
