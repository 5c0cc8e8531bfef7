"""Trainer callbacks of the training process: metrics, heartbeats, stop-on-signal and torn
checkpoint markers. Imported only by `runner.train`, in the training process."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from runner.checkpoints import INCOMPLETE_MARKER
from runner.redact import redact

GIB = 1024**3
# The state's step is rewritten at most this often (a viewer needs no more).
HEARTBEAT_S = 1.0
# Keys of the trainer's end-of-training summary; kept out of the per-step metrics.
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# Causes of a stop asked from inside the process, weakest first; ranks share the strongest one
# as its index.
STOP_CAUSES = ("", "the watchdog", "a preemption notice")


class StopBeforeTraining(BaseException):
    """Raised by the signal handler when a stop comes before the first training step: nothing
    is worth saving yet, so the process ends at once instead of loading a model first. A
    BaseException, so that no library's `except Exception` swallows it."""


# The run folder is looked for at most this often (a deleted folder ends the training).
FOLDER_CHECK_S = 1.0


class StopOnSignal(TrainerCallback):
    """After SIGTERM (or SIGINT), checkpoint at the next step boundary and stop; before the
    first step, stop at once (`StopBeforeTraining`). Also stops, saving nothing, when the run
    folder has been deleted: the trainer must not keep a GPU busy for a run nobody can see.

    The signal handler only sets `requested` once training runs; the decision is taken in
    `on_step_end`, after the optimizer step, so the checkpoint holds a consistent step. Ranks
    agree through an all-reduce (any rank that saw the signal stops them all), otherwise one rank
    would leave the collective ops of the others hanging. transformers' own
    `enable_jit_checkpoint` waits and then saves in a way that did not resume exactly; a regular
    save at a step boundary does.

    `request_stop` is the same stop asked from inside the process, with a reason (a preemption
    notice, the watchdog); its cause travels in the same all-reduce. A stop that comes during an
    evaluation ends the evaluation at its next batch (see `cut_evaluation_short`) instead of
    waiting for it.
    """

    def __init__(self, run_dir: Path | None = None, on_stop: Callable[[int], None] | None = None):
        self.requested = False
        self.stopped_at_step: int | None = None
        self.folder_gone = False
        self.on_stop = on_stop
        self._run_dir = run_dir
        self._folder_id = _folder_id(run_dir) if run_dir is not None else None
        self._folder_checked_s = 0.0
        self._armed = False
        self._training = False
        self.stop_reason: str | None = None
        self._cause = 0  # index in STOP_CAUSES of the strongest stop asked from inside
        self.evaluation_cut_at: int | None = None
        self._steps_this_segment = 0

    @property
    def training(self) -> bool:
        return self._training

    @property
    def cause(self) -> str:
        """What asked for the stop from inside (see `STOP_CAUSES`); empty for none."""
        return STOP_CAUSES[self._cause]

    def request_stop(self, cause: str, reason: str) -> None:
        """Stop at the next step boundary, for `reason`; callable from any thread."""
        code = STOP_CAUSES.index(cause)
        if code > self._cause:
            self.stop_reason, self._cause = reason, code

    def arm(self) -> None:
        """From now until training starts, a stop ends the process at once."""
        self._armed = True
        if self.requested and not self._training:
            raise StopBeforeTraining

    def training_started(self) -> None:
        self._training = True

    def handle_signal(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self._armed and not self._training:
            raise StopBeforeTraining

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._training = True

    def _folder_missing(self, saving: bool) -> bool:
        if self._run_dir is None or self._folder_id is None:
            return False
        now_s = time.monotonic()
        # Always before a save: the trainer would otherwise make the deleted folder again.
        if not saving and now_s - self._folder_checked_s < FOLDER_CHECK_S:
            return False
        self._folder_checked_s = now_s
        return _folder_id(self._run_dir) != self._folder_id

    def _agreed(self, saving: bool) -> tuple[bool, bool]:
        """(stop, folder gone), the same on every rank. A cause seen on another rank arrives
        as its code; its reason is then named from the code."""
        # One reading of what this rank knows: a thread may ask for a stop at any moment, and
        # the answer must be what went into the all-reduce, or ranks would disagree.
        stop, gone, cause = self.requested, self._folder_missing(saving), self._cause
        if _distributed():
            flags = torch.tensor([int(stop), int(gone), cause], dtype=torch.int32)
            if dist.get_backend() == "nccl":
                flags = flags.cuda()
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, gone, cause = bool(flags[0].item()), bool(flags[1].item()), int(flags[2].item())
            if cause > self._cause:
                self._cause = cause
                self.stop_reason = f"{STOP_CAUSES[cause]} on another machine of the run"
        return stop or cause > 0, gone

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        self._steps_this_segment += 1
        if self.stopped_at_step is not None:
            return control
        stop, gone = self._agreed(bool(control.should_save))
        return self._act(state, control, stop, gone)

    def _act(
        self, state: TrainerState, control: TrainerControl, stop: bool, gone: bool
    ) -> TrainerControl:
        if gone:
            self.folder_gone = True
            self.stopped_at_step = state.global_step
            control.should_save = False  # there is nowhere to save to
            control.should_training_stop = True
        elif stop:
            self.requested = True
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
            if self.on_stop is not None and state.is_world_process_zero:
                self.on_stop(state.global_step)
        return control

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        """During an evaluation: a stop ends it here, with the checkpoint still to come (also
        a stop decided at the step boundary just before the evaluation began)."""
        if not self._training or self._steps_this_segment == 0:
            # The evaluation a resumed run makes up for before its first step: a stop now is
            # taken at that step's end (the trainer resets its save flag before the step).
            return control
        if self.stopped_at_step is None:
            stop, gone = self._agreed(saving=False)
            if not (stop or gone):
                return control
            self._act(state, control, stop, gone)  # the same decision as at a step boundary
        self.evaluation_cut_at = state.global_step
        raise EvaluationCut


class EvaluationCut(BaseException):
    """Ends an evaluation early because the run is stopping (raised by `StopOnSignal` between
    two evaluation batches, caught around `Trainer.evaluate`). A BaseException, so that no
    library's `except Exception` swallows it."""


def cut_evaluation_short(trainer: Any, marker: CheckpointMarker) -> None:
    """Let `StopOnSignal` end an evaluation in the middle.

    transformers' evaluation loop has no way out: `on_prediction_step` runs after every batch
    but the loop ignores the control it returns. So the stop raises `EvaluationCut` there and
    this wrapper of `trainer.evaluate` turns it into an evaluation without metrics (nothing is
    logged for it); the trainer then saves, as the stop asked, and leaves its loop. A run that
    picks its best checkpoint by a metric is given the worst value, so the cut evaluation
    is never taken for the best one. The resumed run makes the evaluation up before its first
    step (`missed_evaluation`).
    """
    evaluate = trainer.evaluate

    def evaluate_or_cut(*args: Any, **kwargs: Any) -> dict[str, float]:
        try:
            return evaluate(*args, **kwargs)
        except EvaluationCut:
            # The step boundary has passed: mark the checkpoint the stop asked for here.
            marker.mark(trainer.args, trainer.state, trainer.control)
            metric = trainer.args.metric_for_best_model
            if not metric:
                return {}
            key = metric if metric.startswith("eval_") else f"eval_{metric}"
            return {key: -math.inf if trainer.args.greater_is_better else math.inf}

    trainer.evaluate = evaluate_or_cut


def _folder_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint folder incomplete before the trainer writes it and clears the mark
    once every rank has finished, so a hard kill mid-save leaves a folder resume will skip.

    Must come after transformers' flow callback and `StopOnSignal`, which decide `should_save`.
    """

    def __init__(
        self,
        checkpoints_dir: Path,
        on_saved: Callable[[int], None] | None = None,
        before_save: Callable[[Path], None] | None = None,
    ):
        self.checkpoints_dir = checkpoints_dir
        self._on_saved = on_saved
        self._before_save = before_save

    def mark(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
        # `args.should_save`: the process that writes this folder (one per machine with
        # save_on_each_node, else rank 0).
        if control.should_save and args.should_save:
            folder = self.checkpoints_dir / f"checkpoint-{state.global_step}"
            if not self.checkpoints_dir.parent.is_dir():
                return  # the run folder is gone: do not make it again
            if self._before_save is not None:
                self._before_save(folder)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / INCOMPLETE_MARKER).write_text("checkpoint being written\n")

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.mark(args, state, control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.mark(args, state, control)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if _distributed():
            dist.barrier()  # every rank has written its RNG state and shards
        if args.should_save:
            folder = self.checkpoints_dir / f"checkpoint-{state.global_step}"
            _fsync_tree(folder)
            (folder / INCOMPLETE_MARKER).unlink(missing_ok=True)
            if self._on_saved is not None:
                self._on_saved(state.global_step)


def _fsync_tree(folder: Path) -> None:
    """Flush a finished checkpoint to disk, so a power cut cannot tear what we called complete."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class MetricsWriter(TrainerCallback):
    """Appends one JSON line per trainer log event to metrics.jsonl (rank 0 only) and beats the
    heartbeat in state.json.

    TRL's `num_tokens` restarts from zero in a resumed process; `tokens_offset` (the count at the
    resumed checkpoint) makes it continue instead.
    """

    def __init__(
        self,
        metrics_path: Path,
        on_progress: Callable[[int, int | None, dict[str, Any]], None],
        secrets: list[str],
        tokens_offset: int = 0,
    ):
        self.metrics_path = metrics_path
        self._on_progress = on_progress
        self._secrets = secrets
        self.tokens_offset = tokens_offset
        self._fh: Any = None
        self._last_beat_s = 0.0
        self._last_tokens: tuple[float, int] | None = None
        self.peak_gpu_mem_gib: float | None = None
        self.last_record: dict[str, Any] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if state.is_world_process_zero:
            self._fh = self.metrics_path.open("a", encoding="utf-8")
            self._last_tokens = (time.time(), self.tokens_offset)
            self._on_progress(state.global_step, state.max_steps, {"steps_started": True})

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        now_s = time.time()
        if now_s - self._last_beat_s >= HEARTBEAT_S or state.global_step >= state.max_steps:
            self._last_beat_s = now_s
            self._on_progress(state.global_step, state.max_steps, {})

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs or self._fh is None:
            return
        if any(key in logs for key in SUMMARY_KEYS):
            return
        now_s = time.time()
        record: dict[str, Any] = {"step": state.global_step}
        for key, value in logs.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)):
                record[key] = value if math.isfinite(value) else str(value)
            elif isinstance(value, str):
                record[key] = redact(value, self._secrets)
        if isinstance(record.get("num_tokens"), (int, float)):
            tokens = int(record["num_tokens"]) + self.tokens_offset
            record["num_tokens"] = tokens
            if self._last_tokens is not None and "loss" in record:
                then_s, then_tokens = self._last_tokens
                if now_s > then_s and tokens >= then_tokens:
                    record["tokens_per_s"] = (tokens - then_tokens) / (now_s - then_s)
                self._last_tokens = (now_s, tokens)
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / GIB
            self.peak_gpu_mem_gib = max(self.peak_gpu_mem_gib or 0.0, peak)
            record["peak_gpu_mem_gib"] = round(self.peak_gpu_mem_gib, 3)
            record["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
        record["wall_time"] = round(now_s, 3)
        # One write of one whole line: a hard kill can tear only the last line, which
        # readers skip and the resume truncates.
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self.last_record = record

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if state.is_world_process_zero:
            self._on_progress(state.global_step, state.max_steps, {})


class WatchdogHooks(TrainerCallback):
    """Feeds the run's `runner.watchdog.Watchdog` (on the rank that keeps the state); `beat()`
    writes a heartbeat, here during evaluations."""

    def __init__(self, watchdog: Any, beat: Callable[[], None]):
        self.watchdog = watchdog
        self._beat = beat

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.watchdog.training_started()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.watchdog.step_ended(state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if logs:
            self.watchdog.logged(state.global_step, logs)

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.watchdog.evaluating():
            self._beat()


def missed_evaluation(checkpoint: Path, args: TrainingArguments) -> int | None:
    """The step of the evaluation due at `checkpoint` that its log history lacks (a stop cut it
    short), or None: the resumed run makes it up before its first step."""
    try:
        saved = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    step, every = saved.get("global_step"), saved.get("eval_steps")
    if not isinstance(step, int) or step <= 0:
        return None
    if strategy == "steps":
        every = int(every) if isinstance(every, (int, float)) and every >= 1 else 0
        due = every > 0 and step % every == 0 and step >= (args.eval_delay or 0)
    elif strategy == "epoch":
        epoch = saved.get("epoch")
        due = isinstance(epoch, (int, float)) and float(epoch).is_integer()
    else:
        due = False
    if not due:
        return None
    for entry in saved.get("log_history") or []:
        if (
            isinstance(entry, dict)
            and entry.get("step") == step
            and any(key.startswith("eval_") for key in entry)
        ):
            return None
    return step
