"""Run folders: the one contract between a training process and everything that looks at it.

A run lives in `<runs root>/<run id>/`:

- `config.yaml`   the resolved preset as launched; never changed afterwards;
- `state.json`    `RunState`, always replaced atomically (a reader sees the old or the new file);
- `metrics.jsonl` one JSON object per trainer log event, each with `step`;
- `train.log`     stdout and stderr of the training processes;
- `checkpoints/checkpoint-N/` and `output/`.

Viewers (the CLI, the app, a later login on a new box) only read these files. A state that says
`running` whose process is gone (killed, rebooted box, another machine's volume) is reported as
`interrupted`: see `effective_status`.
"""

from __future__ import annotations

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


# ---------------------------------------------------------------- state.json


def _write_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Replace `path` by `text` so a reader sees the whole old or the whole new file.
    `durable` also fsyncs; heartbeats skip it (losing one to a power cut does not matter)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_state(run_dir: Path | str, state: RunState, durable: bool = True) -> None:
    """Write `state.json` atomically (owner-only permissions)."""
    _write_atomic(Path(run_dir) / STATE_FILE, state.model_dump_json(indent=2) + "\n", durable)


def read_state(run_dir: Path | str) -> RunState | None:
    """The run's state, or None when the file is missing or unreadable."""
    try:
        text = (Path(run_dir) / STATE_FILE).read_text(encoding="utf-8")
        return RunState.model_validate_json(text)
    except (OSError, ValidationError, ValueError):
        return None


def update_state(run_dir: Path | str, durable: bool = True, **changes: Any) -> RunState | None:
    """Read, change and write back the state; None when there is no readable state."""
    state = read_state(run_dir)
    if state is None:
        return None
    new = RunState.model_validate({**state.model_dump(), **changes})
    write_state(run_dir, new, durable=durable)
    return new


def process_alive(state: RunState) -> bool | None:
    """Whether the run's process still exists: True, False, or None when it cannot be told
    from here (another machine whose heartbeat is recent)."""
    if state.pid is None:
        # Between the launcher's first write and the process start: give it a moment.
        began = parse_iso(state.segment_started_at)
        return None if began is not None and time.time() - began < STARTING_S else False
    if state.host and state.host != socket.gethostname():
        beat = parse_iso(state.updated_at) or parse_iso(state.segment_started_at)
        if beat is not None and time.time() - beat < REMOTE_STALE_S:
            return None
        return False
    current_boot = boot_id()
    if state.boot_id and current_boot and state.boot_id != current_boot:
        return False
    import psutil  # light, already a dependency; imported here to keep the module lean

    try:
        proc = psutil.Process(state.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if state.pid_create_time is not None:
            return abs(proc.create_time() - state.pid_create_time) < 1.0
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def effective_status(state: RunState) -> RunStatus:
    """The status as a viewer should show it: `running`/`stopping` with no process left is
    `interrupted`."""
    if state.status in ACTIVE and process_alive(state) is False:
        return "interrupted"
    return state.status


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
            "state": self.state.model_dump(mode="json"),
        }


def summarize(run_dir: Path, state: RunState, now_s: float | None = None) -> RunSummary:
    """A summary from the state and the tail of the metrics."""
    now_s = time.time() if now_s is None else now_s
    status = effective_status(state)
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
    if status in ACTIVE and state.max_steps and steps_done > 0 and pace_s > 0:
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
    )


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        return [p for p in children if p.is_dir() and (p / STATE_FILE).is_file()]

    def list(self) -> list[RunSummary]:
        """Every run with a readable state, newest first."""
        out: list[RunSummary] = []
        for run_dir in self._run_dirs():
            state = read_state(run_dir)
            if state is not None:
                out.append(summarize(run_dir, state))
        out.sort(key=lambda s: (s.state.started_at or "", s.run_id), reverse=True)
        return out

    def resolve(self, run_id_or_dir: str | Path) -> Path:
        """The folder of a run given its id (under the root) or a path to its folder."""
        text = str(run_id_or_dir)
        candidates = [self.root / text]
        if os.sep in text or Path(text).is_absolute() or text.startswith("."):
            candidates.insert(0, Path(text).expanduser())
        for cand in candidates:
            if (cand / STATE_FILE).is_file():
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
        """One run's summary; RunError when there is no such run or its state is unreadable."""
        run_dir = self.resolve(run_id_or_dir)
        state = read_state(run_dir)
        if state is None:
            raise RunError([f"{run_dir / STATE_FILE}: unreadable run state"])
        return summarize(run_dir, state)

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


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
