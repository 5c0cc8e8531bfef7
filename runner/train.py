"""The training process: `python -m runner.train RUN_DIR` (or under torchrun, one per rank).

Reads the run folder's config.yaml, builds the model, adapter and TRL trainer, resumes from the
newest complete checkpoint if there is one, and reports through the run folder only: rank 0
writes state.json and metrics.jsonl; every rank's output goes to train.log. On SIGTERM it writes
a checkpoint at the next step boundary and exits with status `interrupted`; a SIGTERM before the
first step (the launcher starts it with the signal blocked, so none is lost while Python starts)
ends it at once, with nothing to save. A cloud's preemption notice (`runner.preempt`) and the
watchdog's collapse or non-finite findings (`runner.watchdog`) take the same path, with their
reason in state.json. It holds the run's lock (`runner.run_lock`) for its life.

This module imports the training stack at import time; nothing else in tunedeck imports it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml

from presets.schema import Preset
from presets.store import PresetError, validate
from runner import checkpoints as ckpt
from runner import run_lock
from runner.redact import redact, secret_values
from runner.runs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    OUTPUT_DIR,
    STOP_REQUEST_FILE,
    boot_id,
    now_iso,
    parse_iso,
    process_start_ticks,
    read_metrics,
    read_state,
    record_step,
    update_state,
)

# Exit code of a training process that finds another one holding its run.
EXIT_BUSY = 3
# Exit code when the run folder was deleted under a running trainer.
EXIT_FOLDER_GONE = 4


class TrainingFailure(Exception):
    """A failure whose one-line reason is already known (bad data, no GPU for QLoRA...)."""


# ---------------------------------------------------------------- output redaction


class RedactedOutput:
    """Routes this process's stdout and stderr (file descriptors 1 and 2, so C-level output too)
    through a pipe, blanks secret values line by line, and writes the rest to train.log.
    Used only when the environment holds secrets; otherwise output goes to the log directly."""

    def __init__(self, secrets: list[str]):
        self.secrets = secrets
        self.sink = os.dup(1)
        read_fd, write_fd = os.pipe()
        self._read_fd = read_fd
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, name="redact-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self._read_fd, 65536)
            if not chunk:
                break
            pending += chunk
            # Redact whole lines only, so a secret split across reads is still caught.
            cut = max(pending.rfind(b"\n"), pending.rfind(b"\r"))
            if cut < 0 and len(pending) < 1 << 20:
                continue
            ready, pending = (
                (pending[: cut + 1], pending[cut + 1 :]) if cut >= 0 else (pending, b"")
            )
            self._write(ready)
        if pending:
            self._write(pending)

    def _write(self, data: bytes) -> None:
        text = redact(data.decode("utf-8", errors="replace"), self.secrets)
        os.write(self.sink, text.encode("utf-8"))

    def close(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.sink, 1)  # closes the pipe's last writers: the pump sees the end
        os.dup2(self.sink, 2)
        self._thread.join(timeout=10)


# ---------------------------------------------------------------- the run


class Run:
    """One segment of a run, as seen from inside the training process."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_rank0 = self.rank == 0
        # Each machine has its own run folder (launched there with its own --node-rank): the
        # first process of each machine keeps that folder's state; metrics come from rank 0.
        self.writes_state = int(os.environ.get("LOCAL_RANK", "0")) == 0
        self.secrets = secret_values()
        self.segment_started_s = time.time()
        self.preset: Preset | None = None
        self.mirror: Any = None
        """`runner.mirror.Mirror` on rank 0 when `launch.mirror` is set."""

    def say(self, message: str) -> None:
        """One line in train.log, from rank 0 only."""
        if self.is_rank0:
            # On a full disk train.log takes nothing more; what matters is in state.json.
            with contextlib.suppress(OSError):
                print(f"tunedeck: {message}", flush=True)

    def set_state(self, durable: bool = True, spend_reserve: bool = True, **changes: Any) -> None:
        if self.writes_state:
            changes["updated_at"] = now_iso()
            update_state(self.run_dir, durable=durable, spend_reserve=spend_reserve, **changes)

    def checkpoint_saved(self, step: int, urgent: bool) -> None:
        """A checkpoint is complete on every rank; `urgent` when a stop is under way."""
        self.set_state(durable=False, checkpoint_step=step)
        if self.mirror is not None:
            self.mirror.checkpoint_saved(step, urgent=urgent)

    def load_preset(self) -> Preset:
        path = self.run_dir / CONFIG_FILE
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise TrainingFailure(f"{path}: cannot read the run's config ({exc})") from None
        try:
            return validate(data, str(path))
        except PresetError as exc:
            raise TrainingFailure("; ".join(exc.lines)) from None

    def record_start(self, resume_step: int, resumed_from: str | None, launched: bool) -> None:
        process: dict[str, Any] = {}
        if not launched:
            # Started by hand rather than by `tunedeck run`/`resume`, which record the process.
            pgid = os.getpgid(0)
            try:
                leader_created = psutil.Process(pgid).create_time()
            except psutil.Error:
                leader_created = None
            process = {
                "pid": pgid,
                "pgid": pgid,
                "pid_create_time": leader_created,
                "pid_start_ticks": process_start_ticks(pgid),
            }
        self.set_state(
            status="running",
            host=socket.gethostname(),
            boot_id=boot_id(),
            **process,
            segment_start_step=resume_step,
            step=resume_step,
            resumed_from=resumed_from,
            ended_at=None,
            exit_code=None,
            failure_reason=None,
            steps_started_at=None,
            stopped_by_user=False,
            watchdog=None,
            watchdog_stopped=False,
            preemption=None,
            progress_at=None,
            stall_after_s=None,
        )

    def record_end(self, status: str, exit_code: int, reason: str | None = None, **extra: Any):
        if not self.writes_state:
            return
        state = read_state(self.run_dir)
        started = parse_iso(state.segment_started_at) if state else None
        active_s = (state.active_s if state else 0.0) + (time.time() - started if started else 0.0)
        self.set_state(
            status=status,
            exit_code=exit_code,
            failure_reason=redact(reason, self.secrets) if reason else None,
            ended_at=now_iso(),
            active_s=round(active_s, 3),
            **extra,
        )


def _tokens_at(run_dir: Path, step: int) -> int:
    """TRL's token count at `step` in metrics.jsonl (0 when unknown), to continue it on resume."""
    count = 0
    for record in read_metrics(run_dir / METRICS_FILE):
        at = record_step(record)
        if at is not None and at <= step and isinstance(record.get("num_tokens"), int):
            count = record["num_tokens"]
    return count


def _disk_full(exc: BaseException) -> bool:
    """Whether a failure was the disk filling up (torch reports it in its own words)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        text = str(seen)
        if "No space left on device" in text or "file write failed" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _disk_full_reason(run_dir: Path, exc: BaseException) -> str:
    try:
        free_mib = shutil.disk_usage(run_dir).free / 2**20
        free = f"{free_mib:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return (
        f"disk full ({free} on the runs folder's disk): {first}; free some space "
        "(or move the runs folder) and resume"
    )


def _finished_checkpoint(resume: ckpt.CheckpointInfo | None) -> bool:
    """Whether the checkpoint to resume from already is the last step (a stop or a kill at the
    last step): the run is then completed from it, without training a step more."""
    if resume is None:
        return False
    max_steps = ckpt.trainer_max_steps(resume.path)
    return max_steps is not None and 0 < max_steps <= resume.step


def _quiet_libraries() -> None:
    """Silence what would open every train.log with noise: weight-loading progress bars and
    bitsandbytes' note that an optional CPU kernel package is absent (it uses its own)."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom_type) or "CUDA out of memory" in str(exc)


def _planner_fix(preset: Preset) -> str | None:
    """The planner's cheapest change that makes this run fit, if the planner can tell."""
    try:
        from planner import plan, request_from_preset
    except ImportError:
        return None
    from runner.gpu import GpuSource

    source = GpuSource()
    snap = source.snapshot()
    source.close()
    gpu_gib = snap.gpus[0].memory_total_gib if snap.available and snap.gpus else None
    try:
        report = plan(request_from_preset(preset, gpu_memory_gib=gpu_gib))
    except Exception as exc:  # the planner's own refusal must not hide the OOM itself
        return f"(planner could not suggest a fix: {exc})"
    for option in report.options:
        if option.method == preset.method and option.fix:
            return str(option.fix)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m runner.train RUN_DIR", file=sys.stderr)
        return 2
    from runner.train_callbacks import StopOnSignal

    run_dir = Path(argv[0]).resolve()
    stopper = StopOnSignal(run_dir=run_dir)
    signal.signal(signal.SIGTERM, stopper.handle_signal)
    signal.signal(signal.SIGINT, stopper.handle_signal)
    # Own session already; a stray hang-up must not end a run either.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The launcher blocks these until the handler above is in place: a stop sent while Python
    # was starting is delivered now (the handler only notes it until the run is armed below).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    lock_fd = run_lock.inherited(run_dir)
    launched = lock_fd is not None or "LOCAL_RANK" in os.environ
    if not launched:
        # Started by hand: hold the lock ourselves, or leave the run to the one who does.
        try:
            lock_fd = run_lock.acquire(run_dir, retry_s=0)
        except (run_lock.RunBusy, OSError) as exc:
            print(f"tunedeck: {run_dir}: another trainer holds this run ({exc})", flush=True)
            return EXIT_BUSY
    run = Run(run_dir)
    output = RedactedOutput(run.secrets) if run.secrets else None
    try:
        code = _main(run, stopper, launched)
        _after_end(run)
        return code
    finally:
        if output is not None:
            output.close()


def _start_mirror(run: Run, preset: Preset) -> Any:
    """The uploader thread of `launch.mirror`, on the one process that keeps the state."""
    if not preset.launch.mirror or not (run.is_rank0 and run.writes_state):
        return None
    from runner.mirror import Mirror, MirrorError

    try:
        return Mirror(run.run_dir, preset.launch.mirror, run.say)
    except (MirrorError, OSError) as exc:
        run.say(f"{exc}; training goes on without the mirror")
        return None


def _after_end(run: Run) -> None:
    """Once the end is recorded, on the process that keeps the state: the mirror catches up
    (for at most `launch.mirror_wait_s`), the notification goes out (for at most
    `notify.END_WAIT_S`) and the on_finish waiter starts. None of it can fail the run."""
    if not run.writes_state:
        return
    if run.mirror is not None and run.preset is not None:
        run.mirror.finish(run.preset.launch.mirror_wait_s)
    state = read_state(run.run_dir)
    if state is None or state.status in ("running", "stopping"):
        return
    from runner import notify, on_finish

    reason = state.failure_reason
    if state.status == "interrupted" and reason is None:
        reason = "stopped with tunedeck stop" if state.stopped_by_user else "stopped by a signal"
    sending = notify.notify_event(run.run_dir, state.status, reason)
    if state.status in ("completed", "failed"):
        try:
            on_finish.start_waiter(run.run_dir)
        except OSError as exc:
            run.say(f"on_finish: cannot start its waiter ({exc.strerror})")
    if sending is not None:
        sending.join(notify.END_WAIT_S)


def _main(run: Run, stopper: Any, launched: bool) -> int:
    from runner.train_callbacks import StopBeforeTraining

    preset: Preset | None = None
    try:
        stopper.arm()  # from here a stop before the first step ends the process at once
        checkpoints_dir = run.run_dir / CHECKPOINTS_DIR
        resume = ckpt.latest_complete(checkpoints_dir)
        resume_step = resume.step if resume else 0
        stopper.on_stop = lambda step: run.set_state(status="stopping", step=step)
        run.record_start(resume_step, str(resume.path) if resume else None, launched)
        return _train(run, stopper, resume, checkpoints_dir)
    except StopBeforeTraining:
        by_user = (run.run_dir / STOP_REQUEST_FILE).exists()
        why = f"{stopper.stop_reason}; " if stopper.stop_reason else ""
        run.record_end(
            "interrupted",
            0,
            f"{why}stopped before the first step; a resume starts where the run was",
            stopped_by_user=by_user,
        )
        run.say(f"{why}stopped before the first step")
        return 0
    except BaseException as exc:
        return _record_failure(run, exc, preset)


def _train(
    run: Run, stopper: Any, resume: ckpt.CheckpointInfo | None, checkpoints_dir: Path
) -> int:
    _quiet_libraries()
    from runner.train_build import BuildFailure, build_trainer
    from runner.train_callbacks import (
        CheckpointMarker,
        MetricsWriter,
        WatchdogHooks,
        cut_evaluation_short,
        missed_evaluation,
    )

    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # CPU runs are demos and tests on small models: extra threads gain little there and
        # cost 10x when the cores are shared (OpenMP threads spin against each other).
        torch.set_num_threads(1)
    resume_step = resume.step if resume else 0
    preset: Preset | None = None
    watcher = watchdog = None
    try:
        preset = run.preset = run.load_preset()
        run.mirror = _start_mirror(run, preset)
        watcher = _watch_preemption(run, stopper, preset)
        watchdog = _make_watchdog(run, stopper, preset, checkpoints_dir)

        def on_progress(step: int, max_steps: int | None, extra: dict[str, Any]) -> None:
            changes: dict[str, Any] = {"step": step, "max_steps": max_steps}
            if extra.get("steps_started"):
                changes["steps_started_at"] = now_iso()
            changes["progress_at"] = now_iso()
            if watchdog is not None:
                changes.update(watchdog.heartbeat_fields())
            # A heartbeat is never the run's last word: the disk reserve is kept for that.
            run.set_state(durable=False, spend_reserve=False, **changes)

        def beat() -> None:
            run.set_state(durable=False, spend_reserve=False, progress_at=now_iso())

        def on_saved(step: int) -> None:
            run.checkpoint_saved(step, stopper.requested)  # the state, then the mirror
            if watchdog is not None:
                watchdog.saved(checkpoints_dir / f"checkpoint-{step}")

        metrics = MetricsWriter(
            run.run_dir / METRICS_FILE,
            on_progress=on_progress,
            secrets=run.secrets,
            tokens_offset=_tokens_at(run.run_dir, resume_step) if resume else 0,
        )
        marker = CheckpointMarker(
            checkpoints_dir,
            on_saved=on_saved,
            before_save=watchdog.saving if watchdog is not None else None,
        )
        callbacks: list[Any] = [stopper, marker, metrics]
        if watchdog is not None:
            callbacks.append(WatchdogHooks(watchdog, beat))
        trainer = build_trainer(preset, run.run_dir, callbacks=callbacks, world_size=run.world_size)
        cut_evaluation_short(trainer, marker)
        if watchdog is not None:
            watchdog.start(beat)
        if resume is not None and _finished_checkpoint(resume):
            # Stopped or killed at the last step: that checkpoint is the final model.
            from transformers import TrainerState

            stopper.training_started()
            trainer._load_from_checkpoint(str(resume.path))
            trainer.state = TrainerState.load_from_json(str(resume.path / "trainer_state.json"))
            run.say(f"{resume.path.name} is the last step: completing without training")
        else:
            missed = missed_evaluation(resume.path, trainer.args) if resume else None
            if missed is not None:
                run.say(f"the evaluation of step {missed} was cut short by the stop: making it up")
                trainer.args.eval_on_start = True
            trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        step = trainer.state.global_step
        peak: dict[str, Any] = {"peak_gpu_mem_gib": metrics.peak_gpu_mem_gib}
        if stopper.folder_gone:
            print(
                f"tunedeck: {run.run_dir} was deleted while training; stopped at step {step} "
                "with nothing saved",
                flush=True,
            )
            return EXIT_FOLDER_GONE
        at_end = 0 < trainer.state.max_steps <= step
        if (stopper.requested or (run.run_dir / STOP_REQUEST_FILE).exists()) and not at_end:
            if stopper.stopped_at_step is None:
                # The signal came after the last step: the run is done, save it as such.
                stopper.requested = False
            else:
                by_user = (run.run_dir / STOP_REQUEST_FILE).exists()
                reason = stopper.stop_reason
                cut = stopper.evaluation_cut_at
                # The log line first: a viewer that sees the state change finds the log complete.
                run.say(
                    f"stopped at step {step}; checkpoint-{step} written"
                    + (f" (the evaluation of step {cut} was cut short)" if cut else "")
                    + (f": {reason}" if reason else "")
                )
                run.record_end(
                    "interrupted",
                    0,
                    reason,
                    step=step,
                    stopped_by_user=by_user,
                    watchdog_stopped=stopper.cause == "the watchdog",
                    **peak,
                )
                return 0
        output_dir = run.run_dir / OUTPUT_DIR
        trainer.save_model(str(output_dir))
        if trainer.is_world_process_zero() and trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(str(output_dir))
        run.say(f"completed at step {step}; saved to {output_dir}")
        run.record_end("completed", 0, step=step, **peak)
        return 0
    except (TrainingFailure, BuildFailure) as exc:
        run.say(f"failed: {exc}")
        run.record_end("failed", 1, str(exc))
        return 1
    except BaseException as exc:
        from runner.train_callbacks import StopBeforeTraining

        if isinstance(exc, StopBeforeTraining):
            raise
        # Torch's archive writer reports a short write on a full disk in its own words
        # ("unexpected pos ..."); the watchdog knew the disk would not take the checkpoint.
        disk_warned = watchdog is not None and "disk" in watchdog.findings
        return _record_failure(run, exc, preset, disk_warned)
    finally:
        for helper in (watcher, watchdog):
            if helper is not None:
                helper.close()


def _watch_preemption(run: Run, stopper: Any, preset: Preset) -> Any:
    """Watch the cloud's preemption notice on the process that keeps this machine's state
    (each machine is warned of its own end); a notice stops the run like SIGTERM."""
    if not run.writes_state:
        return None
    from runner import preempt

    def record(reason: str, then: str = "") -> None:
        try:
            run.set_state(spend_reserve=False, preemption=reason)
        except OSError as exc:  # a full disk: the stop goes on, the log says why
            run.say(f"cannot write state.json ({exc.strerror})")
        run.say(reason + then)

    def on_notice(notice: preempt.Notice) -> None:
        stopper.request_stop("a preemption notice", notice.reason())
        record(notice.reason(), ": checkpointing at the next step boundary")
        if not stopper.training:
            _stop_before_training(run)

    def on_warning(notice: preempt.Notice) -> None:
        record(notice.reason())

    launch = preset.launch
    return preempt.start_watcher(
        launch.preemption, launch.preemption_poll_s, on_notice, on_warning, run.say
    )


def _stop_before_training(run: Run) -> None:
    """Nothing to save yet: end as a SIGTERM would (the handler runs in the main thread). Under
    torchrun the signal goes to torchrun, which hands it to every worker (each runs in a
    session of its own)."""
    os.kill(os.getppid() if run.world_size > 1 else os.getpid(), signal.SIGTERM)


def _make_watchdog(run: Run, stopper: Any, preset: Preset, checkpoints_dir: Path) -> Any:
    """The watchdog of this machine's training, or None when `launch.watchdog` is off."""
    spec = preset.launch.watchdog
    if not spec.enabled or not run.writes_state:
        return None
    from runner.watchdog import Watchdog

    gpus = None
    if torch.cuda.is_available():
        from runner.gpu import GpuSource

        gpus = GpuSource(with_processes=False)

    def report(**fields: Any) -> None:
        try:
            # The disk's reserve is for the run's last words, not for a warning.
            run.set_state(durable=False, spend_reserve=False, **fields)
        except OSError as exc:  # a full disk: the log line is what there is
            run.say(f"watchdog: cannot write state.json ({exc.strerror})")

    return Watchdog(
        spec,
        checkpoints_dir,
        report=report,
        say=run.say,
        request_stop=lambda reason: stopper.request_stop("the watchdog", reason),
        gpus=gpus,
        gpu_indices=range(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
    )


def _record_failure(
    run: Run, exc: BaseException, preset: Preset | None, disk_warned: bool = False
) -> int:
    """Every failure is recorded in the run folder before the process leaves: the state first,
    then the traceback into train.log (which, on a full disk, may not take it)."""
    if isinstance(exc, KeyboardInterrupt):
        code, status, reason, extra = (
            130,
            "interrupted",
            "interrupted before a checkpoint could be written",
            {},
        )
    elif _oom(exc):
        fix = _planner_fix(preset) if preset is not None else None
        code, status, extra = 1, "failed", {"fix": fix}
        reason = "CUDA out of memory" + (f"; fix: {fix}" if fix else "")
    elif _disk_full(exc) or disk_warned:
        code, status, reason, extra = 1, "failed", _disk_full_reason(run.run_dir, exc), {}
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        code, status, extra = 1, "failed", {}
        reason = f"{type(exc).__name__}: {first}"[:500]
    run.record_end(status, code, reason, **extra)
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except OSError:
        pass  # train.log is on the full disk; the reason is in state.json
    return code


if __name__ == "__main__":
    sys.exit(main())
