"""The watchdog: what a training process checks about itself, and the stall judgement that
every viewer shares.

Inside the training process `Watchdog` is fed by a callback (`runner.train_callbacks`) and looks
around in its own thread:

- a non-finite loss or grad norm, and a collapse (grad norm exactly 0, or a loss unchanged to
  1e-6, for `collapse_steps` logged steps in a row) stop the run: a checkpoint at the next step
  boundary, then `interrupted` with the reason, which a person reads before resuming;
- a step that does not end (no progress for `stall_factor` times the median step time, and at
  least `stall_min_s`), GPUs idle for `gpu_idle_s`, less free disk than the next checkpoint
  needs (its size is known after the first), host RAM nearly full: warnings, cleared when the
  condition passes.

Findings in force are one line each in state.json's `watchdog` and each new one is a line in
train.log. A process that is itself stopped (SIGSTOP, a frozen machine) sees nothing, so the
viewers judge a stall from the run's heartbeat (`progress_at`) against the threshold the trainer
last wrote (`stall_after_s`), all through `stall_reason`.

Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presets.schema import WatchdogSpec
    from runner.runs import RunState

# Findings in force are joined by this in state.json (a finding's own text may hold `;`).
FINDINGS_JOIN = " | "
MIB = 2**20
GIB = 2**30
# A loss that moves less than this between two logged steps counts as unchanged.
LOSS_TOLERANCE = 1e-6
# Seconds between two looks at the stall, the GPUs, the disk and the RAM.
TICK_S = 5.0
# Before the median step time is known (warm-up, compilation, a first collective) the stall
# threshold is this many times `stall_min_s`.
FIRST_STEPS_FACTOR = 3.0
STEP_TIMES_KEPT = 101
# The threshold written to state.json is rewritten when it moves by more than this fraction.
THRESHOLD_REWRITE = 0.1
# Progress is written to state.json at most this often during evaluations and saves.
BEAT_S = 1.0


def duration_text(seconds: float) -> str:
    """`45 s`, `7m12s`, `2h05m`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def size_text(size_bytes: float) -> str:
    """`512 B`, `277 KiB`, `14.2 MiB`, `1.4 GiB`."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size_bytes >= scale:
            value = size_bytes / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{size_bytes:.0f} B"


def stall_reason(state: RunState, now_s: float | None = None) -> str | None:
    """Why a running run looks stalled, judged from state.json alone, or None. The one stall
    judgement for every viewer: `runs`, `watch` and the app."""
    from runner.runs import parse_iso

    if state.status != "running" or not state.steps_started_at or not state.stall_after_s:
        return None
    last = parse_iso(state.progress_at) or parse_iso(state.steps_started_at)
    if last is None:
        return None
    idle_s = (time.time() if now_s is None else now_s) - last
    if idle_s <= state.stall_after_s:
        return None
    return (
        f"stalled: no progress for {duration_text(idle_s)} "
        f"(threshold {duration_text(state.stall_after_s)})"
    )


def folder_bytes(folder: Path) -> int:
    """Bytes in the files under `folder` (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # rotated away while counting
    return total


class Watchdog:
    """The checks of one training segment (made only when `spec.enabled`).

    `report(**fields)` writes state.json, `say(text)` the log, `request_stop(reason)` stops at
    the next step boundary; `gpus` (a `runner.gpu.GpuSource`) and `gpu_indices` are the run's
    GPUs, None without one; `clock` is monotonic seconds.

    Main-thread hooks: `training_started`, `step_ended`, `logged`, `evaluating`, `saving`,
    `saved`; `tick` runs in the thread `start` begins (tests call it directly)."""

    def __init__(
        self,
        spec: WatchdogSpec,
        checkpoints_dir: Path,
        report: Callable[..., None],
        say: Callable[[str], None],
        request_stop: Callable[[str], None],
        gpus: Any = None,
        gpu_indices: Iterable[int] = (0,),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.spec = spec
        self.checkpoints_dir = checkpoints_dir
        self._report = report
        self._say = say
        self._request_stop = request_stop
        self._gpus = gpus
        self._gpu_indices = set(gpu_indices)
        self._clock = clock
        self._lock = threading.Lock()
        self.findings: dict[str, str] = {}
        self._stop_reason: str | None = None
        # Progress, in this process's monotonic clock.
        self._started_s: float | None = None
        self._last_progress_s: float | None = None
        self._last_step_s: float | None = None
        self._step_times_s: deque[float] = deque(maxlen=STEP_TIMES_KEPT)
        self._written_threshold_s: float | None = None
        self._beat_s = 0.0
        self._saving: tuple[str, int] | None = None  # checkpoint folder, bytes seen in it
        # Loss checks.
        self._prev_loss: float | None = None
        self._zero_grad_steps = 0
        self._same_loss_steps = 0
        # Resources.
        self.checkpoint_bytes: int | None = None
        self._checkpoint_name: str | None = None
        self._gpu_idle_since_s: float | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # ---------------------------------------------------------------- findings

    def _set(self, kind: str, text: str | None) -> None:
        """Put a finding in force (or clear it) and tell state.json and the log on a change."""
        with self._lock:
            if self.findings.get(kind) == text:
                return
            before = self.findings.pop(kind, None)
            if text is not None:
                self.findings[kind] = text
            line = FINDINGS_JOIN.join(self.findings.values()) or None
        # The log gets each finding once as it starts and once as it clears; state.json keeps
        # its newest figures.
        if text is not None and before is None:
            self._say(f"watchdog: {text}")
        elif text is None and before is not None:
            self._say(f"watchdog: cleared ({before})")
        self._report(watchdog=line)

    def _stop(self, kind: str, text: str) -> None:
        if self._stop_reason is not None:
            return
        self._stop_reason = text
        self._set(kind, text)
        self._request_stop(f"watchdog: {text}")

    # ---------------------------------------------------------------- main-thread hooks

    def stall_after_s(self) -> float:
        """Seconds without progress that count as a stall, at the pace measured so far."""
        if len(self._step_times_s) < 2:
            return FIRST_STEPS_FACTOR * self.spec.stall_min_s
        median_s = statistics.median(self._step_times_s)
        return max(self.spec.stall_min_s, self.spec.stall_factor * median_s)

    def heartbeat_fields(self) -> dict[str, Any]:
        """What a heartbeat adds to state.json: the stall threshold, when it moved enough."""
        threshold_s = round(self.stall_after_s(), 3)
        written = self._written_threshold_s
        if written is not None and abs(threshold_s - written) <= THRESHOLD_REWRITE * written:
            return {}
        self._written_threshold_s = threshold_s
        return {"stall_after_s": threshold_s}

    def training_started(self) -> None:
        now_s = self._clock()
        self._started_s = self._last_progress_s = now_s

    def step_ended(self, step: int) -> None:
        now_s = self._clock()
        if self._last_step_s is not None:
            self._step_times_s.append(now_s - self._last_step_s)
        self._last_step_s = self._last_progress_s = now_s
        if "stall" in self.findings:
            self._set("stall", None)

    def evaluating(self) -> bool:
        """An evaluation batch ended; True when the heartbeat should be written now."""
        now_s = self._clock()
        self._last_progress_s = now_s
        if now_s - self._beat_s < BEAT_S:
            return False
        self._beat_s = now_s
        return True

    def logged(self, step: int, logs: dict[str, Any]) -> None:
        """A trainer log event: the loss checks (evaluation records carry no `loss`)."""
        if self._stop_reason is not None:
            return
        for name, key in (("loss", "loss"), ("grad norm", "grad_norm")):
            value = logs.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self._stop(
                    "non-finite",
                    f"{name} is {value} at step {step}; change the run (a lower learning rate, "
                    "gradient clipping) before resuming",
                )
                return
        loss, grad = logs.get("loss"), logs.get("grad_norm")
        if not isinstance(loss, (int, float)):
            return
        zero_grad = isinstance(grad, (int, float)) and grad == 0.0
        self._zero_grad_steps = self._zero_grad_steps + 1 if zero_grad else 0
        same = self._prev_loss is not None and abs(loss - self._prev_loss) <= LOSS_TOLERANCE
        self._same_loss_steps = self._same_loss_steps + 1 if same else 0
        self._prev_loss = float(loss)
        n = self.spec.collapse_steps
        hint = "change the run (a lower learning rate) before resuming"
        if self._zero_grad_steps >= n:
            self._stop(
                "collapse",
                f"training collapsed: grad norm exactly 0 for {n} logged steps (to step {step}, "
                f"loss {loss:.4f}); {hint}",
            )
        elif self._same_loss_steps >= n:
            self._stop(
                "collapse",
                f"training collapsed: loss unchanged at {loss:.6f} for {n} logged steps (to step "
                f"{step}); {hint}",
            )

    def saving(self, folder: Path) -> None:
        """A checkpoint is about to be written into `folder`: warn first if it will not fit."""
        self._saving = (str(folder), 0)
        self._last_progress_s = self._clock()
        self._check_disk()

    def saved(self, folder: Path) -> None:
        """A checkpoint is complete: its size is what the next one needs."""
        self._saving = None
        self._last_progress_s = self._clock()
        self.checkpoint_bytes = folder_bytes(folder)
        self._checkpoint_name = folder.name
        self._check_disk()

    # ---------------------------------------------------------------- the thread

    def start(self, beat: Callable[[], None]) -> None:
        """Tick every `TICK_S` in a daemon thread; `beat()` writes a heartbeat while a save
        is still growing (a save of a large model takes minutes, and is progress)."""

        def loop() -> None:
            while not self._closed.wait(TICK_S):
                if self.tick():
                    beat()

        self.tick()
        self._thread = threading.Thread(target=loop, name="watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._gpus is not None:
            self._gpus.close()

    def tick(self, now_s: float | None = None) -> bool:
        """One look at the stall, the GPUs, the disk and the RAM. True when a checkpoint being
        written has grown since the last look (progress to report)."""
        now_s = self._clock() if now_s is None else now_s
        grew = self._save_grew()
        if grew:
            self._last_progress_s = now_s
        self._check_stall(now_s)
        self._check_gpus(now_s)
        self._check_disk()
        self._check_ram()
        return grew

    def _save_grew(self) -> bool:
        saving = self._saving
        if saving is None:
            return False
        size = folder_bytes(Path(saving[0]))
        self._saving = (saving[0], size)
        return size > saving[1]

    def _check_stall(self, now_s: float) -> None:
        if self._last_progress_s is None:
            return
        idle_s = now_s - self._last_progress_s
        threshold_s = self.stall_after_s()
        if idle_s > threshold_s:
            self._set(
                "stall",
                f"stalled: no progress for {duration_text(idle_s)} (threshold "
                f"{duration_text(threshold_s)})",
            )

    def _check_gpus(self, now_s: float) -> None:
        if self._gpus is None or self._started_s is None:
            return
        snap = self._gpus.snapshot()
        used = [g for g in snap.gpus if g.index in self._gpu_indices] if snap.available else []
        utils = [g.utilization_pct for g in used]
        if not utils or any(u is None for u in utils):
            return  # no reading: no judgement
        if any(u > 0 for u in utils if u is not None):
            self._gpu_idle_since_s = None
            if "gpu" in self.findings:
                self._set("gpu", None)
            return
        if self._gpu_idle_since_s is None:
            self._gpu_idle_since_s = now_s
        idle_s = now_s - self._gpu_idle_since_s
        if idle_s >= self.spec.gpu_idle_s:
            names = ", ".join(str(g.index) for g in used)
            self._set("gpu", f"GPU {names} at 0 % utilisation for {duration_text(idle_s)}")

    def _check_disk(self) -> None:
        if self.checkpoint_bytes is None:
            return
        try:
            free = shutil.disk_usage(self.checkpoints_dir).free
        except OSError:
            return  # the folder is gone: the trainer stops on that by itself
        need = self.checkpoint_bytes * self.spec.disk_margin
        if free >= need:
            if "disk" in self.findings:
                self._set("disk", None)
            return
        self._set(
            "disk",
            f"disk: {size_text(free)} free, the next checkpoint needs about "
            f"{size_text(self.checkpoint_bytes)} ({self._checkpoint_name}); free some space "
            "before the next save",
        )

    def _check_ram(self) -> None:
        import psutil

        memory = psutil.virtual_memory()
        if memory.percent < self.spec.ram_warn_pct:
            if "ram" in self.findings:
                self._set("ram", None)
            return
        used_gib = (memory.total - memory.available) / GIB
        self._set(
            "ram",
            f"host RAM {memory.percent:.0f} % in use ({used_gib:.1f} of "
            f"{memory.total / GIB:.1f} GiB)",
        )
