"""The `presets` and `sigterm` sections of `benchmarks/gpu_truth.py`.

`presets`: tokens/s of the shipped default LoRA and QLoRA presets run by tunedeck, against a
plain TRL script with TRL's defaults on the same model, data and machine.

`sigterm`: a spot-instance notice in the middle of a real LoRA and QLoRA run. Per method: an
uninterrupted reference run; then the same run launched detached, SIGTERM to
its process group once it is a third of the way through (what a cloud's shutdown notice
sends), the seconds until its checkpoint is complete and until the process is gone, a resume
through `runner.launch.resume` (what `tunedeck resume` does), and the largest difference
between the two runs' losses, step by step.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_truth_measure import (
    GIB,
    POLL_S,
    TERMINAL,
    kill_group,
    measured_fields,
    run_plain,
    run_preset,
    step_rate,
    tokens_per_step,
    wait_gone,
)

from runner.checkpoints import latest_complete
from runner.runs import METRICS_FILE, effective_status, read_metrics, read_state

# A cloud's notice gives about 30 s (GCP, Azure) before the kill.
NOTICE_S = 30.0
LORA_PRESET = "lora-llama3.1-8b-80gb"
QLORA_PRESET = "qlora-llama3.1-8b-24gb"
SMOKE_PRESET_TOKENS = 128


def sigterm_section(
    ctx: Any, model: str, build: Callable[..., None], smoke: bool = False
) -> dict[str, Any]:
    steps = 80 if ctx.cuda else 60 if smoke else 120
    seq_len = 512 if ctx.cuda else 128
    # 64 rows of 4: an epoch every 16 steps, so the resume also crosses epoch boundaries.
    build(ctx, [model], [("sft", seq_len, 64)])
    results = []
    for method in ("lora", "qlora"):
        if method == "qlora" and not ctx.cuda:
            results.append(
                {"method": method, "status": "skipped", "reason": "needs CUDA (bitsandbytes)"}
            )
            continue
        if ctx.over_budget():
            results.append({"method": method, "status": "skipped", "reason": "time budget spent"})
            continue
        try:
            results.append(_one(ctx, model, method, steps, seq_len))
        except Exception as exc:  # one method's failure is a finding; the other still runs
            results.append({"method": method, "status": "failed", "reason": repr(exc)[:500]})
    return {
        "model": model,
        "max_steps": steps,
        "seq_len": seq_len,
        "notice_s": NOTICE_S,
        "results": results,
    }


def _preset(ctx: Any, model: str, method: str, steps: int, seq_len: int, name: str) -> Any:
    from presets.store import validate

    data = {
        "name": name,
        "model": ctx.built[model],
        "dataset": {"path": ctx.data[("sft", seq_len)]},
        "trainer": "sft",
        "method": method,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
        "training": {
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "learning_rate": 0.001 if ctx.cuda else 0.01,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 5,
            "max_length": seq_len,
            "gradient_checkpointing": True,
            "bf16": True,
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": steps // 4,  # the stop comes after one regular checkpoint
            "save_total_limit": 3,
            "seed": 42,
            "report_to": "none",
        },
    }
    return validate(data, f"gpu_truth sigterm {method}")


def _losses(run_dir: Path) -> dict[int, float]:
    return {
        int(r["step"]): float(r["loss"])
        for r in read_metrics(run_dir / METRICS_FILE)
        if "loss" in r and isinstance(r.get("loss"), (int, float))
    }


def _status(run_dir: Path) -> str:
    state = read_state(run_dir)
    return effective_status(state) if state else "failed"


def _wait_terminal(run_dir: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(run_dir)
        if status in TERMINAL:
            return status
        time.sleep(POLL_S)
    return "timed out"


def _one(ctx: Any, model: str, method: str, steps: int, seq_len: int) -> dict[str, Any]:
    from runner.launch import launch, resume

    out: dict[str, Any] = {"method": method}
    ref_preset = _preset(ctx, model, method, steps, seq_len, f"sigterm-{method}-reference")
    reference = run_preset(
        ctx.runs,
        ref_preset,
        ref_preset.name,
        steps,
        ctx.source,
        ctx.timeout_s,
        stop_after_last_step=False,
    )
    out["reference_outcome"] = reference.outcome
    if reference.outcome != "completed":
        return {**out, "status": "failed", "reason": f"reference run: {reference.failure}"}
    ref_losses = _losses(reference.run_dir)

    preset = _preset(ctx, model, method, steps, seq_len, f"sigterm-{method}")
    started = launch(ctx.runs, preset, name=preset.name, force=True)
    assert started.pid is not None
    run_dir = started.run_dir
    stop_at = steps // 3
    deadline = time.monotonic() + ctx.timeout_s
    seen = 0
    while time.monotonic() < deadline:
        seen = max(_losses(run_dir), default=0)
        if seen >= stop_at or _status(run_dir) in TERMINAL:
            break
        time.sleep(POLL_S / 2)
    if seen < stop_at:
        kill_group(started.pid)
        return {**out, "status": "failed", "reason": f"run never reached step {stop_at}"}
    signalled = time.monotonic()
    os.killpg(started.pid, signal.SIGTERM)
    out["signal_after_step"] = seen
    checkpoint_s = exit_s = None
    while time.monotonic() - signalled < 2 * ctx.timeout_s:
        now = time.monotonic() - signalled
        newest = latest_complete(run_dir / "checkpoints")
        if checkpoint_s is None and newest is not None and newest.step >= seen:
            checkpoint_s = round(now, 2)
            out["checkpoint_step"] = newest.step
        if exit_s is None and wait_gone(started.pid, 0):
            exit_s = round(time.monotonic() - signalled, 2)
        if checkpoint_s is not None and exit_s is not None:
            break
        if exit_s is not None and time.monotonic() - signalled > exit_s + 2:
            break  # gone without a new checkpoint
        time.sleep(0.02)
    if exit_s is None:
        kill_group(started.pid)
    state = read_state(run_dir)
    out.update(
        checkpoint_s=checkpoint_s,
        exit_s=exit_s,
        checkpoint_within_notice=checkpoint_s is not None and checkpoint_s <= NOTICE_S,
        status_after_signal=state.status if state else None,
    )
    if checkpoint_s is None:
        return {**out, "status": "failed", "reason": "no complete checkpoint after SIGTERM"}
    resume(run_dir)
    outcome = _wait_terminal(run_dir, ctx.timeout_s)
    out["resume_outcome"] = outcome
    losses = _losses(run_dir)
    common = sorted(set(ref_losses) & set(losses))
    diffs = {s: abs(ref_losses[s] - losses[s]) for s in common}
    after = [d for s, d in diffs.items() if s > out["checkpoint_step"]]
    out.update(
        steps_compared=len(common),
        steps_missing=sorted(set(range(1, steps + 1)) - set(losses))[:10],
        max_abs_loss_diff=max(diffs.values()) if diffs else None,
        max_abs_loss_diff_after_resume=max(after) if after else None,
        first_loss=ref_losses.get(1),
        last_loss=ref_losses.get(steps),
    )
    ok = outcome == "completed" and len(common) == steps
    out["status"] = "ok" if ok else "failed"
    if not ok:
        out["reason"] = f"resumed run {outcome}, {len(common)} of {steps} steps compared"
    return out


# ---------------------------------------------------------------- presets vs plain TRL


def presets_section(
    ctx: Any, model: str, build: Callable[..., None], smoke: bool = False
) -> dict[str, Any]:
    """The shipped default LoRA and QLoRA presets, run by tunedeck, against the plain TRL
    script with TRL's defaults on the same model and data (`benchmarks/gpu_truth_plain.py`)."""
    from presets.store import builtin_dir, read_yaml, validate
    from runner.runs import RunError

    # A CPU step of the LoRA preset (65,536 tokens) takes about a minute on two cores.
    steps, warmup = (ctx.steps, ctx.warmup_steps) if ctx.cuda else (2 if smoke else 3, 1)
    # Rows long enough for the presets' max_length and TRL's default (1024) alike; the smoke
    # run (the test's) caps both at SMOKE_PRESET_TOKENS instead, and says so.
    tokens = SMOKE_PRESET_TOKENS if smoke else 4096
    build(ctx, [model], [("sft", tokens, max(16, steps * 16 + 8))])
    out: dict[str, Any] = {"model": model, "max_steps": steps, "warmup_steps": warmup}
    out["device"] = ctx.gpu_name or "CPU (no GPU): figures are for this CPU, not a GPU"
    if not ctx.cuda:
        out["cpu_note"] = (
            "On a CPU the runner trains in fp32 (it drops bf16 there), while the plain script "
            "keeps TRL's default bf16=True, i.e. bf16 autocast on the CPU: the ratio says "
            "nothing about a GPU."
        )
    results = []
    for name in (LORA_PRESET, QLORA_PRESET):
        data = read_yaml(builtin_dir() / f"{name}.yaml")
        entry: dict[str, Any] = {"preset": name, "method": data["method"]}
        if not ctx.cuda and data["method"] == "qlora":
            results.append({**entry, "status": "skipped", "reason": "needs CUDA (bitsandbytes)"})
            continue
        if ctx.over_budget():
            results.append({**entry, "status": "skipped", "reason": "time budget spent"})
            continue
        training = dict(data["training"])
        overrides = {
            "max_steps": steps,
            "logging_steps": 1,
            "save_strategy": "no",
            "eval_strategy": "no",
        }
        if smoke:
            overrides["max_length"] = tokens
        training.update(overrides)
        for key in ("num_train_epochs", "eval_steps", "save_steps"):
            training.pop(key, None)
        data = {
            **data,
            "name": f"truth-{name}",
            "model": ctx.built[model],
            "dataset": {"path": ctx.data[("sft", tokens)]},
            "training": training,
            "gpu": None,
        }
        preset = validate(data, f"gpu_truth {name}")
        entry["overrides"] = {**overrides, "model": model, "dataset": f"generated, {tokens} tokens"}
        seq = min(tokens, int(training.get("max_length", 1024)))
        ours_tokens = tokens_per_step(
            "sft",
            int(training["per_device_train_batch_size"]),
            int(training.get("gradient_accumulation_steps", 1)),
            seq,
        )
        try:
            run = run_preset(ctx.runs, preset, preset.name, steps, ctx.source, ctx.timeout_s * 2)
        except RunError as exc:
            results.append({**entry, "status": "failed", "reason": "; ".join(exc.lines)})
            continue
        ours = measured_fields(run, warmup, ours_tokens)
        entry["tunedeck"] = {
            "settings": {k: training.get(k) for k in PRESET_KEYS},
            **{k: ours[k] for k in SPEED_KEYS},
        }
        plain_config = {
            "model": ctx.built[model],
            "dataset": ctx.data[("sft", tokens)],
            "method": data["method"],
            "max_steps": steps,
            "lora": data.get("lora") or {},
            "quantization": data.get("quantization") or {},
            "max_length": tokens if smoke else None,
        }
        plain_config["lora"] = {
            "r": 16,
            "alpha": 32,
            "dropout": 0.05,
            "target_modules": "all-linear",
            **plain_config["lora"],
        }
        plain_config["quantization"] = {
            "quant_type": "nf4",
            "double_quant": True,
            "compute_dtype": "bfloat16",
            **plain_config["quantization"],
        }
        resolved, times, sampler, baseline, failure = run_plain(
            plain_config, ctx.work / "plain" / name, ctx.source, ctx.env, ctx.timeout_s * 2
        )
        step_s, timed = step_rate(times, warmup)
        plain: dict[str, Any] = {"settings": resolved, "failure": failure}
        if resolved and step_s:
            plain_tokens = tokens_per_step(
                "sft",
                int(resolved["per_device_train_batch_size"]),
                int(resolved["gradient_accumulation_steps"]),
                min(tokens, int(resolved["max_length"] or tokens)),
            )
            plain.update(
                measured_step_time_s=round(step_s, 4),
                measured_tokens_per_s=round(plain_tokens / step_s, 1),
                tokens_per_step=plain_tokens,
                timed_steps=timed,
                measured_rss_peak_gib=round(sampler.rss_max_bytes / GIB, 3),
                measured_device_peak_gib=(
                    round((sampler.device_max_bytes - baseline) / GIB, 3)
                    if sampler.device_max_bytes is not None and baseline is not None
                    else None
                ),
            )
        entry["plain_trl"] = plain
        ratio = None
        if ours.get("measured_tokens_per_s") and plain.get("measured_tokens_per_s"):
            ratio = round(ours["measured_tokens_per_s"] / plain["measured_tokens_per_s"], 3)
        entry["tokens_per_s_ratio"] = ratio
        entry["status"] = "ok" if ratio is not None else "failed"
        if run.failure:
            entry["reason"] = f"tunedeck run {run.outcome}: {run.failure}"
        elif failure:
            entry["reason"] = failure
        results.append(entry)
    out["results"] = results
    return out


PRESET_KEYS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "gradient_checkpointing",
    "bf16",
    "optim",
)
SPEED_KEYS = (
    "measured_step_time_s",
    "measured_tokens_per_s",
    "tokens_per_step",
    "timed_steps",
    "measured_torch_peak_gib",
    "measured_device_peak_gib",
    "measured_rss_peak_gib",
)
