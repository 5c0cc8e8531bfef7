"""The probe process: `python -m runner.probe_worker PROBE_DIR [--steps N] [--cap-bytes B]`.

Builds the run's real trainer (`runner.train_build.build_trainer`: the same data loading, model,
adapter and TRL trainer as `runner.train`) from PROBE_DIR/config.yaml, then trains a few steps at
a time over the longest examples of the training data, longest first, so the first batch is the
worst the run will meet: once at the preset's micro-batch, once at a smaller one (1, or 2 when
the preset's is 1), and once more at half the preset's when it ran out of memory. Each phase's
peak memory, step times and tokens go to PROBE_DIR/measurements.json; `runner.probe` turns them
into the verdict. Output goes to PROBE_DIR/train.log.

It runs the training stack (imported inside the functions, so walking the package stays light);
nothing in the CLI or the app imports it.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from presets.schema import Preset
from presets.store import PresetError, validate
from runner.probe import MEASURE_FILE
from runner.probe_verdict import LOAD_OOM
from runner.runs import CONFIG_FILE

DEFAULT_MICRO_BATCH = 8  # transformers' per_device_train_batch_size default
GIB = 1024**3


def say(message: str) -> None:
    print(f"tunedeck: probe: {message}", flush=True)


def probe_preset(preset: Preset, steps: int) -> Preset:
    """The preset as the probe trains it: no evaluation, no checkpoints, nothing pushed to the
    hub, one micro-batch per optimizer step (accumulation changes the step time, not the peak),
    the data in the order given (longest first), and the collator in this process (no loader
    workers), so the batches that went in can be recorded."""
    training = dict(preset.training)
    training.update(
        max_steps=steps,
        eval_strategy="no",
        eval_on_start=False,
        save_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=False,
        logging_steps=1,
        gradient_accumulation_steps=1,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        report_to="none",
    )
    return preset.model_copy(update={"training": training})


def example_tokens(dataset: Any) -> list[int]:
    """Tokens of each prepared example, as TRL tokenized (and truncated) it: `input_ids` for SFT;
    the prompt plus the longer answer for DPO."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    names = table.column_names

    def lengths(name: str) -> list[int]:
        return [int(n) for n in pc.list_value_length(table.column(name)).to_pylist()]

    if "input_ids" in names:
        return lengths("input_ids")
    if "chosen_ids" in names and "rejected_ids" in names:
        prompt = lengths("prompt_ids") if "prompt_ids" in names else [0] * table.num_rows
        chosen, rejected = lengths("chosen_ids"), lengths("rejected_ids")
        return [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected, strict=True)]
    raise RuntimeError(f"cannot tell the examples' token lengths from columns {names}")


def _batch_tokens(batch: Any) -> list[int]:
    """Real (unpadded) tokens of each row of a collated batch."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
    if masks:
        return [int(n) for mask in masks for n in mask.sum(dim=-1).tolist()]
    ids = batch.get("input_ids")
    return [int(ids.shape[-1])] * int(ids.shape[0]) if ids is not None else []


class BatchRecorder:
    """Wraps the trainer's collator: the token counts of each batch it builds, in order."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.batches: list[list[int]] = []

    def __call__(self, features: list[Any]) -> Any:
        batch = self.collate(features)
        self.batches.append(_batch_tokens(batch))
        return batch


def _step_timer(on_cuda: bool) -> Any:
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time at the end of each optimizer step (after the device finished it)."""

        def __init__(self) -> None:
            self.ends_s: list[float] = []
            self.started_s = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends_s = []
            self.started_s = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if on_cuda:
                torch.cuda.synchronize()
            self.ends_s.append(time.perf_counter())
            say(f"step {state.global_step}/{state.max_steps}")

    return StepTimer()


def _oom(exc: BaseException) -> bool:
    """torch's out-of-memory, or the CUDA libraries' own words for it (cuBLAS allocates its
    workspace outside torch's allocator)."""
    import torch

    text = str(exc)
    return (
        isinstance(exc, torch.OutOfMemoryError)
        or "out of memory" in text.lower()
        or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def phase_order(micro_batch: int) -> list[int]:
    """The micro-batches measured: the preset's first (the question that matters), then a
    second point for the slope."""
    return [micro_batch, 1 if micro_batch > 1 else 2]


def _run_phase(
    trainer: Any,
    subset: Any,
    micro_batch: int,
    steps: int,
    meter: Any,
    timer: Any,
    recorder: BatchRecorder,
) -> dict[str, Any]:
    trainer.train_dataset = subset
    trainer._train_batch_size = micro_batch
    trainer.args.per_device_train_batch_size = micro_batch
    trainer.args.max_steps = steps
    recorder.batches = []
    say(f"micro-batch {micro_batch}: {steps} steps over the longest examples")
    meter.start_phase()
    phase: dict[str, Any] = {"micro_batch": micro_batch, "ok": True, "error": None}
    began_s = time.perf_counter()
    try:
        with meter.counting():
            trainer.train()
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; other errors are not verdicts
        if not _oom(exc):
            raise
        phase.update(ok=False, error=f"out of memory: {str(exc).strip().splitlines()[0][:300]}")
        say(f"micro-batch {micro_batch}: out of memory")
    peak = meter.end_phase()
    if not phase["ok"]:
        # What the failed step left behind (gradients, a half-built optimizer state) must not
        # count against the next phase.
        trainer.model.zero_grad(set_to_none=True)
        trainer.optimizer = None
        trainer.lr_scheduler = None
    ends = timer.ends_s
    phase.update(
        fit_bytes=peak.fit_bytes,
        allocated_bytes=peak.allocated_bytes,
        reserved_bytes=peak.reserved_bytes,
        device_bytes=peak.device_bytes,
        context_bytes=peak.context_bytes,
        rss_growth_bytes=peak.rss_growth_bytes,
        steps_done=len(ends),
        # Step k's time is from the end of step k-1 (data loading included); step 1 also holds
        # the warm-up (allocations, kernel selection) and is kept apart.
        first_step_s=(ends[0] - timer.started_s) if ends else None,
        step_times_s=[b - a for a, b in itertools.pairwise(ends)],
        batch_tokens=[sum(rows) for rows in recorder.batches[: len(ends)]],
        batch_rows=recorder.batches[:1],
        wall_s=time.perf_counter() - began_s,
    )
    gc.collect()
    return phase


def _device(on_cuda: bool) -> tuple[str, int | None]:
    """The device the probe trained on, and its memory in bytes (CUDA only)."""
    import torch

    if not on_cuda:
        return "cpu", None
    props = torch.cuda.get_device_properties(0)
    return f"cuda:0 {props.name}", int(props.total_memory)


def _load_failure(micro_batch: int, error: str, peak: Any) -> dict[str, Any]:
    """The one phase of a probe whose model did not fit on the card while loading."""
    return {
        "micro_batch": micro_batch,
        "ok": False,
        "error": error,
        "fit_bytes": peak.fit_bytes,
        "allocated_bytes": peak.allocated_bytes,
        "reserved_bytes": peak.reserved_bytes,
        "device_bytes": peak.device_bytes,
        "context_bytes": peak.context_bytes,
        "rss_growth_bytes": peak.rss_growth_bytes,
        "steps_done": 0,
        "first_step_s": None,
        "step_times_s": [],
        "batch_tokens": [],
        "batch_rows": [],
        "wall_s": 0.0,
        "first_rows": [],
        "first_rows_tokens": [],
    }


def _phases(
    trainer: Any,
    micro_batch: int,
    steps: int,
    meter: Any,
    timer: Any,
    tokens: list[int],
    order: list[int],
) -> list[dict[str, Any]]:
    recorder = BatchRecorder(trainer.data_collator)
    trainer.data_collator = recorder
    dataset = trainer.train_dataset
    phases: list[dict[str, Any]] = []
    plan = phase_order(micro_batch)
    while plan:
        mb = plan.pop(0)
        subset = dataset.select(order[: mb * steps])
        phase = _run_phase(trainer, subset, mb, steps, meter, timer, recorder)
        phase["first_rows"] = order[:mb]
        phase["first_rows_tokens"] = [tokens[i] for i in order[:mb]]
        phases.append(phase)
        if mb == micro_batch and not phase["ok"] and micro_batch // 2 > 1:
            plan.append(micro_batch // 2)
        if not phase["ok"] and mb == 1:
            break  # nothing smaller to try
    return phases


def measure(probe_dir: Path, steps: int, cap_bytes: int | None) -> dict[str, Any]:
    import torch

    from runner.probe_memory import MemoryMeter
    from runner.train_build import build_trainer

    preset = _load_preset(probe_dir)
    on_cuda = torch.cuda.is_available()
    if not on_cuda and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as runner.train does on the CPU, so the speed is the run's
    micro_batch = int(preset.training.get("per_device_train_batch_size", DEFAULT_MICRO_BATCH))
    meter = MemoryMeter(on_cuda, cap_bytes)
    timer = _step_timer(on_cuda)
    tokens: list[int] = []
    order: list[int] = []
    try:
        say("building the trainer (data, model, adapter) as the run does")
        meter.start_phase()
        try:
            trainer = build_trainer(probe_preset(preset, steps), probe_dir, callbacks=[timer])
        except RuntimeError as exc:  # a model larger than the card fails here, not in a step
            if not _oom(exc):
                raise
            say(LOAD_OOM)
            error = f"{LOAD_OOM}: {str(exc).strip().splitlines()[0][:300]}"
            phases = [_load_failure(micro_batch, error, meter.end_phase())]
        else:
            meter.adopt(trainer.model)
            # A smaller card than this one is emulated from the first step on; the weights
            # already loaded count against it.
            meter.apply_cap()
            tokens = example_tokens(trainer.train_dataset)
            order = sorted(range(len(tokens)), key=lambda i: (-tokens[i], i))
            phases = _phases(trainer, micro_batch, steps, meter, timer, tokens, order)
        device, device_total = _device(on_cuda)
        return {
            "device": device,
            "device_kind": "cuda" if on_cuda else "cpu",
            "device_memory_total_bytes": device_total,
            "nvml_name": meter.sampler.device_name,
            "torch_version": torch.__version__,
            "micro_batch": micro_batch,
            "steps": steps,
            "cap_bytes": cap_bytes,
            "rows": len(tokens),
            "mean_tokens": sum(tokens) / len(tokens) if tokens else 0.0,
            "max_tokens": max(tokens, default=0),
            "longest_tokens": [tokens[i] for i in order[: max(micro_batch, 2) * steps]],
            "phases": phases,
        }
    finally:
        meter.close()


def _load_preset(probe_dir: Path) -> Preset:
    path = probe_dir / CONFIG_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return validate(data, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.probe_worker")
    parser.add_argument("probe_dir", type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cap-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    probe_dir = args.probe_dir.resolve()
    out = probe_dir / MEASURE_FILE
    try:
        result: dict[str, Any] = {"ok": True, **measure(probe_dir, args.steps, args.cap_bytes)}
    except PresetError as exc:
        result = {"ok": False, "error": "; ".join(exc.lines)}
    except BaseException as exc:  # every failure is written down for the parent to show
        from runner.train_build import BuildFailure

        if not isinstance(exc, BuildFailure):
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = str(exc) if isinstance(exc, BuildFailure) else f"{type(exc).__name__}: {first}"
        result = {"ok": False, "error": reason[:500]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    say("done" if result["ok"] else f"failed: {result['error']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
