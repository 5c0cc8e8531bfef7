"""Measuring one real run for `benchmarks/gpu_truth.py`: launch it the way `tunedeck run` does,
sample the device (NVML) and the host memory of its processes while it trains, and read its
own outputs (metrics.jsonl: step times, TRL's token count, torch's peak memory on CUDA).

Nothing here imports torch: the benchmark process must hold no CUDA context of its own, or the
device's memory would count it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from runner.gpu import GpuSource
from runner.runs import LOG_FILE, METRICS_FILE, MetricsTail, effective_status, read_state

GIB = 1024**3
POLL_S = 0.05
# After a run, the device counts as free again within this much of its memory before the run.
SETTLED_BYTES = 256 * 1024**2
TERMINAL = ("completed", "failed", "interrupted")


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def rss_bytes(pid: int) -> int:
    total = 0
    for proc in process_tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue  # ended between the listing and the read
    return total


def device_used_bytes(source: GpuSource | None, index: int = 0) -> int | None:
    """Memory in use on GPU `index` (every process and the driver), None without a GPU."""
    if source is None:
        return None
    snap = source.snapshot()
    if not snap.available or len(snap.gpus) <= index:
        return None
    return snap.gpus[index].memory_used_bytes


@dataclass
class Sampler:
    """Polls, every POLL_S in a thread: the device's used memory, the NVML memory of the run's
    processes (when the driver reports it per process) and their resident host memory."""

    source: GpuSource | None
    pid: int
    gpu_index: int = 0
    device_max_bytes: int | None = None
    process_gpu_max_bytes: int | None = None
    rss_max_bytes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gpu-truth-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(POLL_S)

    def sample(self) -> None:
        tree = {p.pid for p in process_tree(self.pid)}
        self.rss_max_bytes = max(self.rss_max_bytes, rss_bytes(self.pid))
        self.samples += 1
        if self.source is None:
            return
        snap = self.source.snapshot()
        if not snap.available or len(snap.gpus) <= self.gpu_index:
            return
        gpu = snap.gpus[self.gpu_index]
        if gpu.memory_used_bytes is not None:
            self.device_max_bytes = max(self.device_max_bytes or 0, gpu.memory_used_bytes)
        mine = [p.used_bytes for p in gpu.processes if p.pid in tree and p.used_bytes]
        if mine:
            self.process_gpu_max_bytes = max(self.process_gpu_max_bytes or 0, sum(mine))


def kill_group(pid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL the run's process group (its leader is `pid`) and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, signal.SIGKILL)
    wait_gone(pid, timeout_s)


def wait_gone(pid: int, timeout_s: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def wait_device_settled(source: GpuSource | None, baseline: int | None, timeout_s: float) -> None:
    """Wait until the device's used memory is back to what it was before the run."""
    if source is None or baseline is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        used = device_used_bytes(source)
        if used is None or used <= baseline + SETTLED_BYTES:
            return
        time.sleep(0.2)


def log_tail(run_dir: Path, lines: int = 6) -> list[str]:
    try:
        text = (run_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


@dataclass
class RunOutcome:
    run_dir: Path
    outcome: str
    """`measured` (every step seen, then stopped), `completed`, `failed`, `interrupted`, or
    `timed out`."""
    records: list[dict[str, Any]]
    sampler: Sampler
    baseline_device_bytes: int | None
    wall_s: float
    failure: str | None = None


def run_preset(
    root: Path,
    preset: Any,
    name: str,
    steps: int,
    source: GpuSource | None,
    timeout_s: float,
    stop_after_last_step: bool = True,
) -> RunOutcome:
    """Launch `preset` detached (as `tunedeck run` does) and follow it until its last step is
    logged; then, with `stop_after_last_step`, end it there (the final save of a large model
    takes long and is not measured), else wait until it ends by itself."""
    from runner.launch import launch

    baseline = device_used_bytes(source)
    started = time.monotonic()
    result = launch(root, preset, name=name, force=True)
    assert result.pid is not None
    sampler = Sampler(source, result.pid)
    sampler.start()
    tail = MetricsTail(result.run_dir / METRICS_FILE)
    records: list[dict[str, Any]] = []
    outcome = "timed out"
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        records += tail.read_new()
        last = max((r.get("step", 0) for r in records if "loss" in r), default=0)
        if stop_after_last_step and last >= steps:
            outcome = "measured"
            break
        state = read_state(result.run_dir)
        status = effective_status(state) if state else "failed"
        if status in TERMINAL:
            outcome = status
            break
        time.sleep(POLL_S)
    sampler.sample()
    sampler.stop()
    wall_s = time.monotonic() - started
    if outcome in ("measured", "timed out"):
        kill_group(result.pid)
    else:
        wait_gone(result.pid, 30)
    records += tail.read_new()
    wait_device_settled(source, baseline, 30)
    failure = None
    if outcome not in ("measured", "completed"):
        state = read_state(result.run_dir)
        failure = (state.failure_reason if state else None) or " | ".join(
            log_tail(result.run_dir, 3)
        )
    return RunOutcome(result.run_dir, outcome, records, sampler, baseline, wall_s, failure)


def step_rate(times: list[tuple[int, float]], warmup_steps: int) -> tuple[float | None, int]:
    """Seconds per optimizer step from (step, wall time) pairs, leaving out the first
    `warmup_steps` (compilation, allocator growth, the first optimizer state); and how many
    steps the figure covers."""
    times = sorted(times)
    kept = [t for t in times if t[0] >= warmup_steps]
    if len(kept) < 2 or kept[-1][0] == kept[0][0]:
        return None, 0
    steps = kept[-1][0] - kept[0][0]
    return (kept[-1][1] - kept[0][1]) / steps, steps


def measured_fields(run: RunOutcome, warmup_steps: int, tokens_per_step: int) -> dict[str, Any]:
    """What the run's own outputs and the sampler say, in the results file's field names."""
    logged = [r for r in run.records if "loss" in r and "step" in r]
    step_time_s, timed_steps = step_rate(
        [(int(r["step"]), float(r["wall_time"])) for r in logged if "wall_time" in r],
        warmup_steps,
    )
    trl_tokens_per_step = None
    counted = [(r["step"], r["num_tokens"]) for r in logged if isinstance(r.get("num_tokens"), int)]
    if len(counted) >= 2 and counted[-1][0] > counted[0][0]:
        trl_tokens_per_step = (counted[-1][1] - counted[0][1]) / (counted[-1][0] - counted[0][0])

    def most(key: str) -> float | None:
        values = [float(r[key]) for r in logged if isinstance(r.get(key), (int, float))]
        return max(values) if values else None

    device_peak = None
    s = run.sampler
    if s.device_max_bytes is not None and run.baseline_device_bytes is not None:
        device_peak = (s.device_max_bytes - run.baseline_device_bytes) / GIB
    return {
        "measured_torch_peak_gib": most("peak_gpu_reserved_gib"),
        "measured_allocated_peak_gib": most("peak_gpu_mem_gib"),
        "measured_device_peak_gib": _round(device_peak),
        "measured_process_gpu_gib": _round(
            s.process_gpu_max_bytes / GIB if s.process_gpu_max_bytes else None
        ),
        "measured_rss_peak_gib": _round(s.rss_max_bytes / GIB),
        "measured_step_time_s": _round(step_time_s, 4),
        "measured_tokens_per_s": _round(tokens_per_step / step_time_s if step_time_s else None, 1),
        "timed_steps": timed_steps,
        "tokens_per_step": tokens_per_step,
        "trl_tokens_per_step": _round(trl_tokens_per_step, 1),
        "steps_logged": len(logged),
        "first_loss": _round(logged[0]["loss"], 4) if logged else None,
        "last_loss": _round(logged[-1]["loss"], 4) if logged else None,
        "sampler_samples": s.samples,
        "wall_s": round(run.wall_s, 1),
    }


def tokens_per_step(trainer: str, micro_batch: int, accumulation: int, seq_len: int) -> int:
    return micro_batch * accumulation * seq_len * (2 if trainer == "dpo" else 1)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def run_plain(
    config: dict[str, Any],
    work: Path,
    source: GpuSource | None,
    env: dict[str, str],
    timeout_s: float,
) -> tuple[dict[str, Any] | None, list[tuple[int, float]], Sampler, int | None, str | None]:
    """The plain TRL script on `config`, in its own process group; ended once its last step
    is timed. Returns TRL's resolved arguments, (step, wall time) pairs, the sampler, the
    device baseline and a failure reason."""
    work.mkdir(parents=True, exist_ok=True)
    steps_file = work / "steps.jsonl"
    config = {**config, "steps_file": str(steps_file), "output_dir": str(work / "out")}
    (work / "config.json").write_text(json.dumps(config))
    script = Path(__file__).resolve().parent / "gpu_truth_plain.py"
    baseline = device_used_bytes(source)
    with (work / "plain.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(work / "config.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    sampler = Sampler(source, proc.pid)
    sampler.start()
    deadline = time.monotonic() + timeout_s
    resolved: dict[str, Any] | None = None
    times: list[tuple[int, float]] = []
    failure = None
    while True:
        resolved, times = _read_steps(steps_file)
        if times and times[-1][0] >= config["max_steps"]:
            break
        if proc.poll() is not None:
            resolved, times = _read_steps(steps_file)
            if not times or times[-1][0] < config["max_steps"]:
                tail = (work / "plain.log").read_text(errors="replace").strip().splitlines()
                failure = f"plain TRL script exited {proc.returncode}: " + " | ".join(tail[-3:])
            break
        if time.monotonic() > deadline:
            failure = "plain TRL script timed out"
            break
        time.sleep(POLL_S)
    sampler.sample()
    sampler.stop()
    if proc.poll() is None:
        kill_group(proc.pid)
    proc.wait()
    wait_device_settled(source, baseline, 30)
    return resolved, times, sampler, baseline, failure


def _read_steps(path: Path) -> tuple[dict[str, Any] | None, list[tuple[int, float]]]:
    resolved = None
    times: list[tuple[int, float]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "resolved" in item:
            resolved = item["resolved"]
        elif "step" in item:
            times.append((int(item["step"]), float(item["wall_time"])))
    return resolved, times
