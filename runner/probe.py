"""The probe: a preset's real training, run for a few steps on this box, before money is spent.

`run_probe` checks the preset (model, data, strategy) as a launch would, writes a run-like probe
folder (`config.yaml`, `train.log`), and starts `python -m runner.probe_worker` in its own process
group: the real trainer (`runner.train_build.build_trainer`) over the longest examples of the
data, longest first, at the preset's micro-batch and at a smaller one. `runner.probe_verdict`
turns its `measurements.json` into the verdict, the corrected plan and the planner's figures
beside them: `probe.json` in the probe folder. This module never imports torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presets.store import preset_to_yaml, write_atomic
from runner.probe_verdict import GIB, Capacity, analyse
from runner.runs import CONFIG_FILE, LOG_FILE, ensure_private_dir

if TYPE_CHECKING:
    from presets.schema import Preset
    from runner.gpu import GpuSource

PROBE_FILE = "probe.json"
MEASURE_FILE = "measurements.json"
"""Written by the probe process: the raw per-phase measurements."""
PROBE_SUBDIR = "probe"
"""Inside a run folder, where the probe that preceded it is kept (`run --probe`)."""
DEFAULT_STEPS = 4
DEFAULT_TIMEOUT_S = 1800.0
STATUS_PREFIX = "tunedeck: probe: "


class ProbeError(Exception):
    """A probe that could not run or finish; `lines` say why, one problem each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


# ---------------------------------------------------------------- before starting


def ensure_inputs(preset: Preset) -> None:
    """Build the demo model and data when the preset trains on them (as `tunedeck demo` does);
    OSError when they cannot be written."""
    if "{data_dir}/demo" in preset.model or "{data_dir}/demo" in preset.dataset.path:
        from runner.demo import ensure_demo

        ensure_demo()


def check_probe(preset: Preset, gpu_source: GpuSource | None = None) -> list[str]:
    """Problems that stop the probe before anything is started: the launch's own model and data
    checks, and what one probe process cannot stand for."""
    from runner.launch import preflight

    pf = preflight(preset, check_data=True, gpu_source=gpu_source)
    problems = list(pf.problems)
    if preset.launch.nnodes > 1 or (
        preset.launch.num_gpus > 1 and preset.launch.strategy in ("fsdp", "deepspeed-zero3")
    ):
        problems.append(
            f"launch.strategy {preset.launch.strategy} over {preset.launch.num_gpus} GPU(s) x "
            f"{preset.launch.nnodes} machine(s) shards the model: a probe runs one process on "
            "one GPU and cannot measure it (probe a single-GPU variant, e.g. --set "
            "launch.num_gpus=1 --set launch.strategy=single)"
        )
    return problems


def option_problems(steps: int, gpu_memory_gib: float | None) -> list[str]:
    problems = []
    if steps < 2:
        problems.append(f"--steps {steps}: give at least 2 (the first step is warm-up)")
    if gpu_memory_gib is not None and not gpu_memory_gib > 0:
        problems.append(f"--gpu-memory-gib {gpu_memory_gib}: give a size in GiB above 0")
    return problems


def new_probe_dir(root: Path, name: str) -> Path:
    """A fresh `<name>-probe-<YYYYmmdd-HHMMSS>` folder under the runs root. It holds no
    state.json, so run lists leave it out."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProbeError([f"runs folder {root}: cannot create it ({exc.strerror})"]) from None
    base = f"{name}-probe-{time.strftime('%Y%m%d-%H%M%S')}"
    for candidate in [base] + [f"{base}-{i}" for i in range(2, 100)]:
        path = root / candidate
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ProbeError([f"runs folder {root}: cannot create {candidate} ({exc})"]) from None
        ensure_private_dir(path)
        return path
    raise ProbeError([f"{base} already exists under {root}"])


# ---------------------------------------------------------------- the probe process


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


class ProbeJob:
    """The probe process of one probe folder: `start`, then `wait` (or `cancel`)."""

    def __init__(
        self, probe_dir: Path, steps: int = DEFAULT_STEPS, cap_bytes: int | None = None
    ) -> None:
        self.probe_dir = probe_dir
        self.steps = steps
        self.cap_bytes = cap_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.status = "starting"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "runner.probe_worker", str(self.probe_dir)]
        cmd += ["--steps", str(self.steps)]
        if self.cap_bytes is not None:
            cmd += ["--cap-bytes", str(self.cap_bytes)]
        return cmd

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_project_root(), env.get("PYTHONPATH", "")) if p
        )
        log_path = self.probe_dir / LOG_FILE
        with log_path.open("ab") as log:
            log.write(f"--- {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.probe_dir,
                env=env,
                start_new_session=True,  # its own group: a cancel ends it and its children
                close_fds=True,
            )

    def _read_status(self) -> str:
        try:
            with (self.probe_dir / LOG_FILE).open("rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read()
        except OSError:
            return self.status
        cut = chunk.rfind(b"\n")
        if cut < 0:
            return self.status
        self._log_offset += cut + 1
        for line in reversed(chunk[:cut].decode("utf-8", "replace").splitlines()):
            if line.startswith(STATUS_PREFIX):
                self.status = line[len(STATUS_PREFIX) :].strip()
                break
        return self.status

    def wait(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_status: Callable[[str], None] | None = None,
        poll_s: float = 0.2,
    ) -> int:
        """The probe process's exit code; ProbeError when it runs past `timeout_s`."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        shown = ""
        try:
            while True:
                code = self.proc.poll()
                status = self._read_status()
                if on_status is not None and status != shown:
                    shown = status
                    on_status(status)
                if code is not None:
                    return code
                if time.monotonic() > deadline:
                    self.cancel()
                    raise ProbeError(
                        [
                            f"the probe did not finish within {timeout_s:.0f} s (last: {status}); "
                            f"see {self.probe_dir / LOG_FILE}"
                        ]
                    )
                time.sleep(poll_s)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self) -> None:
        """End the probe process (its whole group) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(timeout=30)


def _log_tail(probe_dir: Path, lines: int = 6) -> list[str]:
    try:
        text = (probe_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def read_measurements(probe_dir: Path) -> dict[str, Any]:
    path = probe_dir / MEASURE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tail = _log_tail(probe_dir)
        raise ProbeError(
            [f"the probe process ended without its measurements ({path})"]
            + [f"  {line}" for line in tail]
        ) from None
    if not data.get("ok"):
        raise ProbeError([f"probe failed: {data.get('error')}", f"log: {probe_dir / LOG_FILE}"])
    return dict(data)


# ---------------------------------------------------------------- the whole probe


def run_probe(
    preset: Preset,
    probe_dir: Path,
    gpu_memory_gib: float | None = None,
    steps: int = DEFAULT_STEPS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[ProbeJob], None] | None = None,
) -> dict[str, Any]:
    """Probe `preset` in `probe_dir` (already created) and return probe.json's content.
    `gpu_memory_gib` judges (and caps) the run as if the GPU had that much memory; without
    it the GPU the probe ran on is used, and on the CPU there is nothing to judge against."""
    problems = option_problems(steps, gpu_memory_gib)
    if problems:
        raise ProbeError(problems)
    write_atomic(probe_dir / CONFIG_FILE, preset_to_yaml(preset), mode=0o600)
    cap = None if gpu_memory_gib is None else int(gpu_memory_gib * GIB)
    job = ProbeJob(probe_dir, steps=steps, cap_bytes=cap)
    job.start()
    if on_start is not None:
        on_start(job)
    job.wait(timeout_s=timeout_s, on_status=on_status)
    try:
        measured = read_measurements(probe_dir)
    except ProbeError as exc:
        _write_result(probe_dir, {"ok": False, "probe_id": probe_dir.name, "error": exc.lines})
        raise
    if gpu_memory_gib is not None:
        capacity = Capacity(gpu_memory_gib, "--gpu-memory-gib")
    elif measured.get("device_memory_total_bytes"):
        capacity = Capacity(measured["device_memory_total_bytes"] / GIB, "detected")
    else:
        capacity = Capacity(None, "none")
    result = analyse(preset, measured, capacity, probe_dir)
    _write_result(probe_dir, result)
    return result


def _write_result(probe_dir: Path, result: dict[str, Any]) -> None:
    write_atomic(probe_dir / PROBE_FILE, json.dumps(result, indent=2) + "\n", mode=0o600)


def keep_in_run(probe_dir: Path, run_dir: Path) -> Path:
    """Move a probe folder into the run it preceded (`RUN/probe/`), updating its recorded
    place; returns the new folder."""
    target = run_dir / PROBE_SUBDIR
    os.replace(probe_dir, target)
    path = target / PROBE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return target
    data["probe_dir"] = str(target)
    data["run_id"] = run_dir.name
    _write_result(target, data)
    return target
