"""Starting, stopping and resuming runs.

A run is started in its own session and process group (setsid), with stdin closed and its output
going to train.log, so it does not die with the terminal, the SSH session or the app that started
it; the launcher returns as soon as the process exists. Everything is checked before anything is
created: a refused launch leaves no folder behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presets import locations
from runner import checkpoints as ckpt
from runner import run_lock
from runner.runs import (
    ACTIVE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    STOP_REQUEST_FILE,
    RunError,
    RunState,
    boot_id,
    ensure_private_dir,
    make_reserve,
    now_iso,
    parse_iso,
    process_alive,
    process_start_ticks,
    read_state_checked,
    record_step,
    recovered_state,
    update_state,
    write_state,
)

if TYPE_CHECKING:
    from presets.schema import Preset
    from runner.gpu import GpuSource

# torchrun gives its workers this long after a SIGTERM before it kills them; a checkpoint of a
# large model needs more than its default 30 s.
TORCHRUN_SHUTDOWN_S = 600
# Where `report_to: tensorboard` writes, inside the run folder.
TENSORBOARD_DIR = "tensorboard"
# A resume waits this long for a trainer that has recorded its end to finish exiting.
EXITING_WAIT_S = 60.0


@dataclass(frozen=True)
class LaunchResult:
    run_id: str
    run_dir: Path
    warnings: list[str] = field(default_factory=list)
    pid: int | None = None
    start_step: int = 0
    """Step the training starts from (a resume's checkpoint; 0 for a new run)."""
    start_checkpoint: str | None = None
    """The checkpoint folder a resume starts from (None: from step 0)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "warnings": self.warnings,
            "start_step": self.start_step,
            "start_checkpoint": self.start_checkpoint,
        }


@dataclass
class Preflight:
    """What was found before launching: `problems` refuse the launch, `warnings` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: Any = None
    data: Any = None
    fit_check: str = "not checked"
    fit_problem: str | None = None
    """The plan does not fit the detected GPUs (refused unless forced)."""
    planned_device_peak_gib: float | None = None
    gpu_count: int = 0


@dataclass(frozen=True)
class Distributed:
    """Several machines: what torchrun needs to find the others."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500


# ---------------------------------------------------------------- checks before launching


def _looks_local(raw: str, expanded: str) -> bool:
    if raw.startswith(("/", ".", "~", "{data_dir}")) or os.path.exists(expanded):
        return True
    # A hub id is `name` or `org/name`; anything deeper is a path.
    return expanded.count("/") > 1


def _check_model(preset: Preset, pf: Preflight) -> None:
    from runner import model_checks

    model = locations.expand(preset.model)
    if not _looks_local(preset.model, model):
        hub = model_checks.hub_model_findings(model)
        pf.problems += hub.problems
        pf.warnings += hub.warnings
        return
    path = Path(model)
    if not path.is_dir():
        hint = (
            " (`tunedeck run demo` or `tunedeck demo` builds it)"
            if "{data_dir}/demo" in preset.model
            else ""
        )
        pf.problems.append(f"model: {model}: no such folder{hint}")
    elif not (path / "config.json").is_file():
        hint = model_checks.not_a_model_hint(path)
        pf.problems.append(f"model: {model}: not a model folder (no config.json in it){hint}")
    else:
        pf.problems += model_checks.local_model_problems(path)


def _check_data(preset: Preset, pf: Preflight) -> None:
    from runner.data import check_dataset

    spec = preset.dataset
    path = locations.expand(spec.path)
    eval_path = locations.expand(spec.eval_path) if spec.eval_path else None
    max_length = preset.training.get("max_length")
    report = check_dataset(
        path,
        trainer=preset.trainer,
        max_length=max_length if isinstance(max_length, int) else None,
        fmt=spec.format,
        eval_path=eval_path,
        eval_fraction=spec.eval_fraction,
    )
    pf.data = report
    _data_problems(report, "dataset", pf)
    if eval_path:
        # Only its errors: a lone eval file's "too small, no eval split" advice is for train data.
        eval_pf = Preflight()
        eval_report = check_dataset(eval_path, trainer=preset.trainer, fmt=spec.format)
        _data_problems(eval_report, "eval", eval_pf)
        pf.problems += eval_pf.problems


def _data_problems(report: Any, what: str, pf: Preflight) -> None:
    if report.usage_error:
        pf.problems.append(f"{what}: {report.usage_error}")
        return
    shown = report.errors[:8]
    pf.problems += [f"{what}: {line}" for line in shown]
    if len(report.errors) > len(shown):
        pf.problems.append(f"{what}: ... and {len(report.errors) - len(shown)} more problems")
    pf.warnings += [f"{what}: {line}" for line in report.warnings[:5]]


def _check_fit(preset: Preset, pf: Preflight, gpu_source: GpuSource | None) -> None:
    from runner.gpu import GpuSource

    source = gpu_source or GpuSource()
    snap = source.snapshot()
    if gpu_source is None:
        source.close()
    gpus = snap.gpus if snap.available else ()
    pf.gpu_count = len(gpus)
    if not gpus:
        pf.fit_check = "no GPU: not checked"
        if preset.method == "qlora":
            pf.problems.append("method qlora needs a CUDA GPU (bitsandbytes 4-bit); none found")
            return
        import psutil

        from runner.model_checks import cpu_run_verdict

        # A missing driver must not turn a 70B run into a silent CPU run.
        cpu = cpu_run_verdict(
            preset, snap.reason or "no NVIDIA GPU found", psutil.virtual_memory().available
        )
        pf.fit_check = cpu.fit_check
        pf.fit_problem = cpu.problem
        pf.warnings += [cpu.warning] if cpu.warning else []
        return
    try:
        from planner import PlanError, plan, request_from_preset
    except ImportError:
        pf.fit_check = "planner not available: not checked"
        return
    try:
        report = plan(
            request_from_preset(
                preset,
                gpu=gpus[0].name if preset.gpu is None else None,
                gpu_memory_gib=gpus[0].memory_total_gib,
                num_gpus=min(len(gpus), preset.launch.num_gpus),
            )
        )
    except PlanError as exc:
        pf.fit_check = "not checked"
        pf.warnings += [f"plan: {line}" for line in exc.lines]
        return
    pf.plan = report
    option = next((o for o in report.options if o.method == preset.method), None)
    if option is None:
        pf.fit_check = "not checked"
        return
    pf.planned_device_peak_gib = option.device_peak_gib
    total_gib = gpus[0].memory_total_gib or 0.0
    if option.fits is False:
        pf.fit_check = "does not fit"
        fix = f"; fix: {option.fix}" if option.fix else ""
        pf.fit_problem = (
            f"plan: {preset.method} needs about {option.device_peak_gib:.1f} GiB per GPU, "
            f"the GPU has {total_gib:.1f} GiB{fix}"
        )
    else:
        pf.fit_check = "fits"


def preflight(
    preset: Preset, check_data: bool = True, gpu_source: GpuSource | None = None
) -> Preflight:
    """Check the model, the data, TRL's view of the training arguments and the fit on the
    detected GPUs (`gpu_source`, default the real NVML) before launching; never raises for bad
    input."""
    from runner.config_check import check_training_config

    pf = Preflight()
    _check_model(preset, pf)
    if check_data:
        _check_data(preset, pf)
        # TRL's own checks, in a child process (torch never loads here); like the data, a
        # resume does not repeat them: config.yaml was checked when the run was launched.
        check_training_config(preset).add_to(pf)
    if preset.launch.strategy == "deepspeed-zero3":
        from importlib.util import find_spec

        if find_spec("deepspeed") is None:
            pf.problems.append(
                "launch.strategy deepspeed-zero3 needs DeepSpeed: pip install deepspeed "
                "(or use strategy fsdp)"
            )
    _check_fit(preset, pf, gpu_source)
    _check_mirror_and_notify(preset, pf)
    return pf


def _check_mirror_and_notify(preset: Preset, pf: Preflight) -> None:
    """The mirror's scheme has a backend here; the notify URLs' variables are set (no network)."""
    from runner.mirror import check_url
    from runner.notify import expand

    if preset.launch.mirror:
        problem = check_url(preset.launch.mirror)
        if problem:
            pf.problems.append(f"launch.mirror: {problem}")
    for number, url in enumerate(preset.launch.notify, start=1):
        missing = expand(url)[1]
        if missing:
            pf.warnings.append(
                f"launch.notify item {number}: {', '.join(missing)} not set in this environment "
                "(that URL will not be told)"
            )


# ---------------------------------------------------------------- process start


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def training_command(run_dir: Path, num_procs: int, dist: Distributed) -> list[str]:
    """`python -m runner.train RUN_DIR`, under torchrun when there is more than one process."""
    if num_procs <= 1 and dist.nnodes <= 1:
        return [sys.executable, "-m", "runner.train", str(run_dir)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={num_procs}",
        f"--nnodes={dist.nnodes}",
        f"--shutdown_timeout={TORCHRUN_SHUTDOWN_S}",
    ]
    if dist.nnodes > 1:
        cmd += [
            f"--node_rank={dist.node_rank}",
            f"--master_addr={dist.master_addr}",
            f"--master_port={dist.master_port}",
        ]
    else:
        cmd.append("--standalone")  # a free local port: several runs side by side
    return [*cmd, "-m", "runner.train", str(run_dir)]


def _spawn(run_dir: Path, command: list[str], lock_fd: int) -> subprocess.Popen[bytes]:
    """Start the training detached, handing it the run's lock (`lock_fd`) to hold for life."""
    env = dict(os.environ)
    env[run_lock.LOCK_FD_ENV] = str(lock_fd)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `report_to: tensorboard` writes its event files into the run folder, beside the metrics.
    env.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / TENSORBOARD_DIR))
    # TRL reports each trainer it builds to huggingface.co: a training run sends nothing
    # anywhere unless the user says so (HF_HUB_DISABLE_TELEMETRY=0).
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_project_root(), env.get("PYTHONPATH", "")) if p
    )
    log_fd = os.open(run_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with open(log_fd, "ab", closefd=False) as log:
            log.write(f"--- {now_iso()} {' '.join(command)}\n".encode())
        # A single training process starts with SIGTERM and SIGINT blocked (the mask survives
        # exec) and unblocks them once its handler is in place: a stop sent while Python starts
        # is held, not fatal. torchrun installs its own handlers and gets the signals as usual.
        block = {signal.SIGTERM, signal.SIGINT} if "torch.distributed.run" not in command else set()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, block)
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=run_dir,
                env=env,
                start_new_session=True,  # setsid: own session and process group, no terminal
                close_fds=True,
                pass_fds=(lock_fd,),
                umask=0o077,  # every file of the run readable by its owner only
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    finally:
        os.close(log_fd)


def _record_process(run_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    import psutil

    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = None
    update_state(
        run_dir,
        pid=proc.pid,
        pgid=proc.pid,  # start_new_session makes the child its group's leader
        pid_create_time=created,
        pid_start_ticks=process_start_ticks(proc.pid),
        boot_id=boot_id(),
        host=socket.gethostname(),
        updated_at=now_iso(),
    )


def _check_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            [
                f"runs folder {root}: cannot create it ({exc.strerror}); choose another with "
                "--runs-dir or TUNEDECK_RUNS"
            ]
        ) from None
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise RunError(
            [f"runs folder {root}: not writable; choose another with --runs-dir or TUNEDECK_RUNS"]
        )


def _new_run_dir(root: Path, preset_name: str, name: str | None) -> Path:
    from presets.schema import NAME_PATTERN

    if name is not None:
        if not NAME_PATTERN.fullmatch(name):
            raise RunError(
                [
                    f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting "
                    "with a letter or digit"
                ]
            )
        candidates = [name]
    else:
        base = f"{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        candidates = [base] + [f"{base}-{i}" for i in range(2, 100)]
    for run_id in candidates:
        run_dir = root / run_id
        try:
            run_dir.mkdir(mode=0o700)  # exclusive: two launches never share a folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunError(
                [f"runs folder {root}: cannot create {run_id} ({exc.strerror})"]
            ) from None
        ensure_private_dir(run_dir)
        return run_dir
    raise RunError([f"run {candidates[0]} already exists under {root}; choose another --name"])


def launch(
    root: Path,
    preset: Preset,
    name: str | None = None,
    force: bool = False,
    auto_resume: bool | None = None,
    dist: Distributed | None = None,
    gpu_source: GpuSource | None = None,
    probed_fit: str | None = None,
) -> LaunchResult:
    """Check, create the run folder, start the training detached and return at once.
    `probed_fit` says that a probe on this box measured the run fitting (e.g. "14.2 GiB"): the
    measurement then overrules the planner's estimate."""
    dist = dist or Distributed(nnodes=preset.launch.nnodes)
    pf = preflight(preset, gpu_source=gpu_source)
    problems = list(pf.problems)
    warnings = list(pf.warnings)
    fit_check = pf.fit_check
    if probed_fit and pf.fit_problem:
        warnings.append(f"{pf.fit_problem} (launched: the probe measured {probed_fit}, which fits)")
        fit_check = f"fits by the probe ({probed_fit}); the plan said it does not"
    elif probed_fit:
        fit_check = f"fits by the probe ({probed_fit})"
    elif pf.fit_problem:
        if force:
            warnings.append(pf.fit_problem + " (launched anyway: --force)")
            fit_check = "does not fit: forced"
        else:
            problems += [pf.fit_problem, "nothing launched; --force launches anyway"]
    if dist.nnodes > 1 and not dist.master_addr:
        problems.append("several machines (nnodes > 1) need --master-addr")
    if problems:
        raise RunError(problems)
    _check_root(root)
    run_dir = _new_run_dir(root, preset.name, name)
    try:
        lock_fd = run_lock.acquire(run_dir, retry_s=0)
    except (OSError, run_lock.RunBusy) as exc:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # made a moment ago, holds nothing yet
        raise RunError([f"run {run_dir}: cannot take its lock ({exc})"]) from None
    try:
        return _start_new(run_dir, preset, pf, fit_check, warnings, auto_resume, dist, lock_fd)
    finally:
        os.close(lock_fd)  # the training process holds its own copy


def _start_new(
    run_dir: Path,
    preset: Preset,
    pf: Preflight,
    fit_check: str,
    warnings: list[str],
    auto_resume: bool | None,
    dist: Distributed,
    lock_fd: int,
) -> LaunchResult:
    from presets.store import preset_to_yaml, write_atomic

    try:
        from runner.redact import redact, secret_values

        # A token pasted into a --set value must not be stored; the training reads tokens
        # from the environment, where the libraries look for them anyway.
        config_text = redact(preset_to_yaml(preset), secret_values())
        write_atomic(run_dir / CONFIG_FILE, config_text, mode=0o600)
        state = RunState(
            run_id=run_dir.name,
            status="running",
            host=socket.gethostname(),
            started_at=now_iso(),
            segment_started_at=now_iso(),
            preset_name=preset.name,
            method=preset.method,
            trainer=preset.trainer,
            num_gpus=preset.launch.num_gpus,
            price_usd_per_h=preset.price_usd_per_h,
            planned_device_peak_gib=pf.planned_device_peak_gib,
            fit_check=fit_check,
            max_steps=preset.training.get("max_steps")
            if isinstance(preset.training.get("max_steps"), int)
            else None,
            auto_resume=preset.launch.auto_resume if auto_resume is None else auto_resume,
            boot_id=boot_id(),
        )
        write_state(run_dir, state)
        _save_dist(run_dir, dist)
        make_reserve(run_dir)
        proc = _spawn(run_dir, training_command(run_dir, preset.launch.num_gpus, dist), lock_fd)
    except OSError as exc:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # only what this launch wrote a moment ago
        raise RunError([f"run {run_dir}: cannot start ({exc})"]) from None
    _record_process(run_dir, proc)
    return LaunchResult(run_dir.name, run_dir, warnings, proc.pid)


def _save_dist(run_dir: Path, dist: Distributed) -> None:
    import json

    from presets.store import write_atomic

    write_atomic(run_dir / "launch.json", json.dumps(dist.__dict__) + "\n", mode=0o600)


def _load_dist(run_dir: Path) -> Distributed:
    import json

    try:
        return Distributed(**json.loads((run_dir / "launch.json").read_text()))
    except (OSError, ValueError, TypeError):
        return Distributed()


# ---------------------------------------------------------------- control


def _state_or_recovered(run_dir: Path) -> RunState:
    state, problem = read_state_checked(run_dir)
    if state is not None:
        return state
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError([f"{run_dir}: no readable state.json ({problem}); is this a run folder?"])
    return recovered_state(run_dir, problem or "state.json is unreadable")


def stop(run_dir: Path, now: bool = False) -> list[str]:
    """SIGTERM the run's process group (it checkpoints, then stops as `interrupted`), or with
    `now` SIGKILL it and record it interrupted at its last checkpoint. Returns warnings (a stop
    that could not be written down in a read-only folder is still carried out)."""
    state = _state_or_recovered(run_dir)
    alive = process_alive(state, run_dir)
    if alive is False:
        status = "interrupted" if state.status in ACTIVE else state.status
        raise RunError([f"{state.run_id} is not running (it is {status}); nothing to stop"])
    if alive is None:
        if state.host and state.host != socket.gethostname():
            raise RunError([f"{state.run_id} runs on {state.host}; stop it there"])
        raise RunError([f"{state.run_id} is still starting; try again in a moment"])
    if state.pgid is None:
        raise RunError(
            [
                f"{state.run_id} is running but its state.json does not name its process; "
                f"stop it with: kill -TERM -- -<pgid> (see: fuser -v {run_dir / run_lock.LOCK_FILE})"
            ]
        )
    warnings: list[str] = []
    try:
        (run_dir / STOP_REQUEST_FILE).write_text(now_iso() + "\n")
    except OSError as exc:
        warnings.append(
            f"{run_dir}: cannot record the stop there ({exc.strerror}); signalled it anyway"
        )
    try:
        os.killpg(state.pgid, signal.SIGKILL if now else signal.SIGTERM)
    except ProcessLookupError:
        return warnings  # ended between the check and the signal
    except PermissionError:
        raise RunError(
            [f"{state.run_id}: not allowed to signal process group {state.pgid}"]
        ) from None
    if now:
        wait_until_gone(state, run_dir, timeout_s=15)
        warnings += settle_stopped(run_dir, exit_code=-signal.SIGKILL)
    return warnings


def settle_stopped(run_dir: Path, exit_code: int | None = None) -> list[str]:
    """After a stop: a run whose process is gone but whose state still says running (killed
    before it could write, e.g. a signal in its first instant or `stop --now`) is recorded as
    interrupted by the user, with the segment's time counted. Returns warnings."""
    state = read_state_checked(run_dir)[0]
    if state is None or state.status not in ACTIVE or process_alive(state, run_dir) is not False:
        return []
    try:
        update_state(
            run_dir,
            status="interrupted",
            exit_code=exit_code,
            ended_at=now_iso(),
            stopped_by_user=True,
            active_s=state.active_s + _segment_s(state, time.time()),
        )
    except OSError as exc:
        return [f"{run_dir}: cannot record the stop in state.json ({exc.strerror})"]
    return []


def _segment_s(state: RunState, end_s: float | None) -> float:
    began = parse_iso(state.segment_started_at)
    if began is None or end_s is None:
        return 0.0
    return max(0.0, end_s - began)


def wait_until_gone(state: RunState, run_dir: Path | None = None, timeout_s: float = 60) -> bool:
    """Wait for the run's process to end; True when it did within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process_alive(state, run_dir) is False:
            return True
        time.sleep(0.1)
    return process_alive(state, run_dir) is False


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep the records of metrics.jsonl up to `last_step` and drop the rest (records past it,
    a torn last line, lines that are not records), so each step appears once after a resume.
    A damaged line in the middle costs only itself. Returns the lines dropped."""
    import json

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    kept: list[bytes] = []
    dropped = 0
    for line in data.splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            record = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            record = None
        step = record_step(record) if isinstance(record, dict) else None
        if step is not None and step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        _replace_bytes(path, b"".join(kept))
    return dropped


def _replace_bytes(path: Path, data: bytes) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resume(run_dir: Path) -> LaunchResult:
    """Continue an interrupted (or failed) run from its newest complete checkpoint, detached.

    The run's lock is taken first: of two resumes at the same moment one starts a trainer and
    the other is refused, and a run whose trainer is alive is never resumed."""
    lock_existed = (run_dir / run_lock.LOCK_FILE).exists()
    try:
        try:
            lock_fd = run_lock.acquire(run_dir)
        except run_lock.RunBusy:
            state = read_state_checked(run_dir)[0]
            if state is None or state.status in ACTIVE:
                raise
            # The trainer has recorded how it ended and is leaving (its interpreter and CUDA
            # take a moment to shut down): wait for it rather than refuse.
            lock_fd = run_lock.acquire(run_dir, retry_s=EXITING_WAIT_S)
    except run_lock.RunBusy:
        state = read_state_checked(run_dir)[0]
        run_id = state.run_id if state else run_dir.name
        where = f" (pid {state.pid})" if state and state.pid else ""
        raise RunError(
            [
                f"{run_id} is still running{where} or being started by another command; "
                f"stop it first: tunedeck stop {run_id}"
            ]
        ) from None
    except OSError as exc:
        raise RunError([f"{run_dir}: cannot take the run's lock ({exc.strerror})"]) from None
    try:
        return _resume_locked(run_dir, lock_fd, check_pid=not lock_existed)
    finally:
        os.close(lock_fd)  # the training process holds its own copy


def _resume_locked(run_dir: Path, lock_fd: int, check_pid: bool) -> LaunchResult:
    from presets.store import PresetError, read_yaml, validate

    state = _state_or_recovered(run_dir)
    if state.status in ACTIVE:
        # Holding the lock, no trainer of this run lives on this machine; another machine's
        # (shared volume) or one started before locks existed may.
        alive = process_alive(state) if check_pid or state.host != socket.gethostname() else False
        if alive is not False:
            where = f" (pid {state.pid})" if state.pid else ""
            raise RunError(
                [
                    f"{state.run_id} is still running{where}; "
                    f"stop it first: tunedeck stop {state.run_id}"
                ]
            )
    if state.status == "completed":
        raise RunError([f"{state.run_id} has already completed; nothing to resume"])
    try:
        preset = validate(read_yaml(run_dir / CONFIG_FILE), str(run_dir / CONFIG_FILE))
    except PresetError as exc:
        raise RunError(exc.lines) from None
    # The data was checked in full at launch; a resume only needs it to still be there
    # (a large set takes a minute to check, and autostart may resume several runs).
    pf = preflight(preset, check_data=False)
    for label, raw in (("dataset", preset.dataset.path), ("eval", preset.dataset.eval_path)):
        path = locations.expand(raw) if raw else None
        if path and _looks_local(raw or "", path) and not Path(path).exists():
            pf.problems.append(f"{label}: {path}: no longer there (was the volume mounted?)")
    if pf.problems:
        raise RunError(pf.problems)
    warnings = list(pf.warnings)
    checkpoints_dir = run_dir / CHECKPOINTS_DIR
    keep = ckpt.latest_complete(checkpoints_dir)
    for torn in ckpt.discard_after(checkpoints_dir, keep):
        warnings.append(f"skipped {torn.path.name}: {', '.join(torn.problems) or 'after resume'}")
    truncate_metrics(run_dir / METRICS_FILE, keep.step if keep else 0)
    (run_dir / STOP_REQUEST_FILE).unlink(missing_ok=True)
    # A segment that ended without a word (SIGKILL, a lost box) still cost time and money: count
    # it up to its last heartbeat before the new segment starts.
    unrecorded_s = 0.0 if state.ended_at else _segment_s(state, parse_iso(state.updated_at))
    new_state = state.model_copy(
        update={
            "status": "running",
            "resumes": state.resumes + 1,
            "step": keep.step if keep else 0,
            "checkpoint_step": keep.step if keep else None,
            "segment_started_at": now_iso(),
            "segment_start_step": keep.step if keep else 0,
            "active_s": round(state.active_s + unrecorded_s, 3),
            "ended_at": None,
            "exit_code": None,
            "failure_reason": None,
            "pid": None,
            "pgid": None,
            "pid_create_time": None,
            "pid_start_ticks": None,
            "steps_started_at": None,
            "stopped_by_user": False,
            "updated_at": now_iso(),
        }
    )
    write_state(run_dir, new_state)
    make_reserve(run_dir)
    try:
        command = training_command(run_dir, preset.launch.num_gpus, _load_dist(run_dir))
        proc = _spawn(run_dir, command, lock_fd)
    except OSError as exc:
        update_state(run_dir, status="failed", failure_reason=f"cannot start: {exc}")
        raise RunError([f"run {run_dir}: cannot start ({exc})"]) from None
    _record_process(run_dir, proc)
    return LaunchResult(
        run_dir.name,
        run_dir,
        warnings,
        proc.pid,
        start_step=keep.step if keep else 0,
        start_checkpoint=keep.path.name if keep else None,
    )


def resume_from(root: Path, url: str, force: bool = False) -> LaunchResult:
    """`resume --from URL/<run id>`: recreate the run folder under `root` from its mirror (the
    newest checkpoint whose manifest checks out) and resume it; a folder of that run already
    here is resumed from its own checkpoints. `force` takes over a run whose mirrored state
    still looks alive (its box is known to be gone)."""
    from runner import mirror_fetch

    _check_root(root)
    fetched = mirror_fetch.fetch_run(url, root, force=force)
    if fetched.lock_fd is None:
        result = resume(fetched.run_dir)
    else:
        try:
            result = _resume_locked(fetched.run_dir, fetched.lock_fd, check_pid=False)
        except RunError as exc:
            run_id = fetched.run_dir.name
            raise RunError(
                [
                    *exc.lines,
                    f"the run is here now ({fetched.run_dir}); once that is fixed: "
                    f"tunedeck resume {run_id}",
                ]
            ) from None
        finally:
            os.close(fetched.lock_fd)  # the training process holds its own copy
    return LaunchResult(
        result.run_id,
        result.run_dir,
        fetched.warnings + result.warnings,
        result.pid,
        start_step=result.start_step,
        start_checkpoint=result.start_checkpoint,
    )
