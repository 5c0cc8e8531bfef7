"""Evaluation during training: early stopping (transformers' `EarlyStoppingCallback`) and sample
answers every K steps, from the preset's `evaluation` section.

`evaluation_arguments` adds what early stopping needs to the training arguments (keep the best
checkpoint, judged by the eval loss); `evaluation_callbacks` gives the callbacks. Imported only
by the training process (`runner.train_build`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import (
    EarlyStoppingCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from presets.schema import Preset
from runner.evaluate import TRAIN_SAMPLES_FILE
from runner.evaluate_worker import end_of_turn, generate_answer, held_out_prompts
from runner.runs import write_atomic


class EvaluationSetupError(Exception):
    """The preset asks for evaluation-time features the data cannot give (no eval rows)."""


def evaluation_arguments(preset: Preset, args: dict[str, Any]) -> dict[str, Any]:
    """Training arguments early stopping needs, where the preset leaves them out: the best
    checkpoint is kept and loaded at the end, the best being the lowest eval loss. The schema
    has already refused settings that contradict these (`presets.schema.early_stopping_problems`)."""
    if preset.evaluation.early_stopping_patience is None:
        return {}
    out: dict[str, Any] = {"load_best_model_at_end": True}
    if args.get("metric_for_best_model") is None:
        out["metric_for_best_model"] = "eval_loss"
        out["greater_is_better"] = False
    return out


def evaluation_callbacks(
    preset: Preset, run_dir: Path, eval_data: Any, world_size: int
) -> list[TrainerCallback]:
    """Early stopping and the sample writer, as the preset asks; EvaluationSetupError when it
    asks for them without eval data."""
    spec = preset.evaluation
    out: list[TrainerCallback] = []
    if spec.early_stopping_patience is not None:
        if eval_data is None:
            raise EvaluationSetupError(
                "evaluation.early_stopping_patience needs eval data: set dataset.eval_path or "
                "dataset.eval_fraction (or put a test/validation file beside the data)"
            )
        out.append(
            EarlyStoppingCallback(
                early_stopping_patience=spec.early_stopping_patience,
                early_stopping_threshold=spec.early_stopping_threshold,
            )
        )
        out.append(EarlyStopReport(spec.early_stopping_patience))
    if spec.samples_every_steps is not None:
        if eval_data is None:
            raise EvaluationSetupError(
                "evaluation.samples_every_steps answers held-out prompts and needs eval data: "
                "set dataset.eval_path or dataset.eval_fraction"
            )
        if world_size > 1:
            print(
                "tunedeck: evaluation.samples_every_steps needs a single training process; "
                f"this run has {world_size}: no samples are written",
                flush=True,
            )
        else:
            prompts = held_out_prompts(eval_data, spec.sample_prompts)
            out.append(
                SampleWriter(
                    run_dir / TRAIN_SAMPLES_FILE,
                    prompts,
                    every_steps=spec.samples_every_steps,
                    max_new_tokens=spec.sample_max_new_tokens,
                    max_length=int(preset.training.get("max_length") or 1024),
                )
            )
    return out


class EarlyStopReport(TrainerCallback):
    """Says in train.log when and why early stopping ended the training, and which step's
    checkpoint is kept."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not state.is_world_process_zero or state.global_step >= state.max_steps:
            return
        if not control.should_training_stop or state.best_metric is None:
            return
        best = state.best_model_checkpoint or "?"
        print(
            f"tunedeck: early stopping at step {state.global_step}: "
            f"{args.metric_for_best_model} did not improve for {self.patience} evaluations; "
            f"best {state.best_metric:.4f} at {Path(best).name}, kept as the output",
            flush=True,
        )


class SampleWriter(TrainerCallback):
    """Every `every_steps` steps, greedy answers to the held-out prompts, appended to
    train_samples.jsonl (rank 0 of a single-process run only)."""

    def __init__(
        self,
        path: Path,
        prompts: list[dict[str, Any]],
        every_steps: int,
        max_new_tokens: int,
        max_length: int,
    ):
        self.path = path
        self.prompts = prompts
        self.every_steps = every_steps
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # A resumed run drops the samples written past its checkpoint, as with the metrics.
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        kept = []
        for line in lines:
            try:
                step = json.loads(line).get("step")
            except ValueError:
                continue  # a line torn by a hard kill
            if isinstance(step, int) and step <= state.global_step:
                kept.append(line + "\n")
        if len(kept) != len(lines):
            write_atomic(self.path, "".join(kept))

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        processing_class: Any = None,
        **kw: Any,
    ) -> None:
        if state.global_step % self.every_steps or not self.prompts or model is None:
            return
        stop = end_of_turn(processing_class)
        was_training = model.training
        model.eval()
        records = []
        try:
            for item in self.prompts:
                answer = generate_answer(
                    model,
                    processing_class,
                    item["prompt"],
                    max_length=self.max_length,
                    max_new_tokens=self.max_new_tokens,
                    stop=stop,
                )
                records.append(
                    {
                        "step": state.global_step,
                        "index": item["index"],
                        "prompt_text": item["prompt_text"],
                        "reference": item["reference"],
                        "answer": answer,
                    }
                )
        finally:
            model.train(was_training)
        with self.path.open("a", encoding="utf-8") as fh:
            # One write of whole lines: a kill can tear only the last one, which readers skip.
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
