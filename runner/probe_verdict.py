"""The probe's verdict, from the probe process's measurements, without torch:

- whether the run fits: the measured peak at the preset's micro-batch against the GPU's memory
  less the planner's headroom (`planner.core.HEADROOM`); an out-of-memory is a "no";
- the largest micro-batch that fits: activations are taken as linear in the micro-batch, with the
  slope of torch's allocated peak between the two measured micro-batches, from the measured peak
  of the larger one; never past a micro-batch that ran out of memory;
- tokens/s and step time from the timed steps (the first, warm-up step left out), and the ETA and
  cost over the planner's step count for the dataset;
- the planner's own figures for the same preset and data beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presets.schema import Preset

GIB = 1024**3
# Extrapolation beyond what was measured stops at this many times the largest measured batch.
EXTRAPOLATE_FACTOR = 8
LOAD_OOM = "out of memory while loading the model"
"""How the probe process words a model that did not fit on the card before any step."""


@dataclass(frozen=True)
class Capacity:
    """The memory the run is judged against."""

    gib: float | None
    source: str
    """`--gpu-memory-gib`, `detected` (the GPU the probe ran on) or `none`."""


def _gib(value_bytes: float | None) -> float | None:
    return None if value_bytes is None else round(value_bytes / GIB, 4)


def max_micro_batch(
    phases: list[dict[str, Any]], usable_bytes: float, limit: int
) -> tuple[int, float | None, str]:
    """The largest micro-batch whose peak stays within `usable_bytes`, its activation slope in
    bytes per example (None when it could not be measured) and how it was found. Measured
    micro-batches count as measured; others lie on the line through the measured peak of the
    largest good micro-batch with the slope of torch's allocated peak between two of them."""
    good = sorted((p for p in phases if p["ok"]), key=lambda p: p["micro_batch"])
    failed = [p["micro_batch"] for p in phases if not p["ok"]]
    upper = min([limit, *[m - 1 for m in failed]])
    if not good:
        loading = [p for p in phases if str(p.get("error", "")).startswith(LOAD_OOM)]
        return 0, None, LOAD_OOM if loading else f"micro-batch {min(failed)} ran out of memory"
    ref = good[-1]
    slope: float | None = None
    if len(good) >= 2:
        low = good[0]
        delta = ref["allocated_bytes"] - low["allocated_bytes"]
        slope = max(0.0, delta / (ref["micro_batch"] - low["micro_batch"]))
    measured = {p["micro_batch"]: p["fit_bytes"] for p in good}
    best = 0
    for m in range(1, upper + 1):
        if m in measured:
            peak: float | None = measured[m]
        elif slope is not None:
            peak = ref["fit_bytes"] + slope * (m - ref["micro_batch"])
        else:
            peak = None
        if peak is None or peak > usable_bytes:
            if m in measured or slope is not None:
                break
            continue
        best = m
    if slope is None:
        how = "measured only (one micro-batch ran): not extrapolated"
    else:
        sizes = " and ".join(str(p["micro_batch"]) for p in (good[0], ref))
        how = (
            f"extrapolated from micro-batches {sizes}, activations linear in the micro-batch "
            f"({slope / GIB * 1024:.2f} MiB per example)"
        )
    if failed:
        how += f"; micro-batch {min(failed)} ran out of memory"
    if best == upper == limit and not failed:
        how += f"; capped at {limit} ({EXTRAPOLATE_FACTOR}x the largest measured)"
    return best, slope, how


def _timing(phase: dict[str, Any]) -> tuple[float | None, float | None, int]:
    """(seconds per micro-batch step, tokens/s, steps timed), the first step left out when there
    are others."""
    times = phase.get("step_times_s") or []
    tokens = phase.get("batch_tokens") or []
    if times:
        spent = sum(times)
        counted = sum(tokens[1 : 1 + len(times)])
        return spent / len(times), (counted / spent if spent > 0 else None), len(times)
    first = phase.get("first_step_s")
    if first and tokens:
        return first, tokens[0] / first, 1
    return None, None, 0


def _planned(
    preset: Preset, capacity: Capacity, gpu_name: str | None, rows: int, mean_tokens: float
) -> tuple[Any, str | None]:
    """The planner's option for this preset's method, on this data; (None, why) when it
    cannot plan it."""
    from planner import PlanError, plan, request_from_preset

    try:
        report = plan(
            request_from_preset(
                preset,
                gpu=gpu_name if preset.gpu is None and capacity.source == "detected" else None,
                gpu_memory_gib=capacity.gib,
                num_gpus=preset.launch.num_gpus,
                examples=rows or None,
                avg_tokens=max(1, round(mean_tokens)) if rows else None,
            )
        )
    except PlanError as exc:
        return None, "; ".join(exc.lines)
    option = report.option(preset.method)
    if option is None:
        return None, f"the planner has no {preset.method} option"
    note = (
        None if report.gpu is not None else "no GPU to plan for: the planner's speed is an H100's"
    )
    return (report, option), note


def _fix(preset: Preset, fits: bool | None, best: int | None, plan_fix: str | None) -> str | None:
    """What to change when the probe says it does not fit: the largest micro-batch that fits and
    divides the examples per optimizer step, with the accumulation that keeps that number."""
    if fits is not False:
        return None
    mb = int(preset.training.get("per_device_train_batch_size", 8))
    per_step = mb * int(preset.training.get("gradient_accumulation_steps", 1))
    if best:
        new_mb = max(d for d in range(1, min(best, per_step) + 1) if per_step % d == 0)
        return (
            f"--set training.per_device_train_batch_size={new_mb} "
            f"--set training.gradient_accumulation_steps={per_step // new_mb} "
            f"(the same {per_step} examples per optimizer step)"
        )
    return plan_fix or (
        "even micro-batch 1 does not fit: shorten training.max_length, turn on "
        "training.gradient_checkpointing, use QLoRA or a bigger GPU (`tunedeck plan` compares)"
    )


def analyse(
    preset: Preset, measured: dict[str, Any], capacity: Capacity, probe_dir: Path
) -> dict[str, Any]:
    """probe.json's content: the measurements, the verdict and the planner's figures."""
    from planner.core import HEADROOM

    mb = int(measured["micro_batch"])
    accum = int(preset.training.get("gradient_accumulation_steps", 1))
    phases: list[dict[str, Any]] = measured["phases"]
    own = next(p for p in phases if p["micro_batch"] == mb)
    good = [p for p in phases if p["ok"]]
    timed = own if own["ok"] else max(good, key=lambda p: p["micro_batch"], default=None)
    usable = None if capacity.gib is None else capacity.gib * (1 - HEADROOM)
    if not own["ok"]:
        fits: bool | None = False
    elif usable is None:
        fits = None
    else:
        fits = own["fit_bytes"] <= usable * GIB
    best: int | None = None
    slope: float | None = None
    how = "no GPU memory to judge against: give --gpu-memory-gib"
    if usable is not None:
        limit = EXTRAPOLATE_FACTOR * max(p["micro_batch"] for p in phases)
        best, slope, how = max_micro_batch(phases, usable * GIB, limit)
    elif not own["ok"]:
        best = max((p["micro_batch"] for p in good if p["micro_batch"] < mb), default=0)
        how = f"micro-batch {mb} ran out of memory; the largest that ran was {best}"
    load_failed = str(own.get("error") or "").startswith(LOAD_OOM)
    if load_failed:
        how = LOAD_OOM

    micro_step_s, tokens_per_s, timed_steps = _timing(timed) if timed else (None, None, 0)
    step_time_s = None if micro_step_s is None else micro_step_s * accum
    peak_phase = own if own["ok"] else None

    gpu_name = measured.get("nvml_name") or (
        measured["device"].split(" ", 1)[1] if measured["device_kind"] == "cuda" else None
    )
    planned, plan_note = _planned(
        preset, capacity, gpu_name, int(measured["rows"]), float(measured["mean_tokens"])
    )
    report, option = planned if planned else (None, None)
    total_steps = None
    if option is not None and option.hours is not None and option.step_time_s > 0:
        total_steps = math.ceil(option.hours * 3600 / option.step_time_s - 1e-6)
    eta_longest_s = eta_s = cost = cost_longest = None
    price = preset.price_usd_per_h
    if price is None and report is not None and report.gpu is not None:
        price = report.gpu.price_usd_per_h
    if total_steps is not None and step_time_s is not None and timed is not None:
        eta_longest_s = total_steps * step_time_s
        subset = measured["longest_tokens"][: timed["micro_batch"] * int(measured["steps"])]
        subset_mean = sum(subset) / len(subset) if subset else 0.0
        # The probe's batches are the data's longest: scaled to the average example (time
        # taken as linear in tokens), the same steps take this long.
        ratio = min(1.0, measured["mean_tokens"] / subset_mean) if subset_mean else 1.0
        eta_s = eta_longest_s * ratio
        if price is not None:
            cost = eta_s / 3600 * price * preset.launch.num_gpus
            cost_longest = eta_longest_s / 3600 * price * preset.launch.num_gpus

    first = phases[0]  # the probe's first batch: the preset's micro-batch, longest first
    on_cuda = measured["device_kind"] == "cuda"
    result: dict[str, Any] = {
        "ok": True,
        "probe_id": probe_dir.name,
        "probe_dir": str(probe_dir),
        "preset": preset.name,
        "method": preset.method,
        "trainer": preset.trainer,
        "device": measured["device"],
        "device_kind": measured["device_kind"],
        "peak_source": (
            "NVML device peak above the probe's start (CUDA context included), at least torch "
            "max_memory_reserved + context"
            if on_cuda
            else "live-tensor count (bytes of live torch storages; the CPU has no allocator "
            "peak); RSS growth reported beside it"
        ),
        "micro_batch": mb,
        "gradient_accumulation_steps": accum,
        "max_length": preset.training.get("max_length"),
        "measured_peak_gib": _gib(peak_phase["fit_bytes"]) if peak_phase else None,
        "torch_peak_allocated_gib": _gib(peak_phase["allocated_bytes"]) if peak_phase else None,
        "torch_peak_reserved_gib": _gib(peak_phase["reserved_bytes"]) if peak_phase else None,
        "nvml_device_peak_gib": _gib(peak_phase["device_bytes"]) if peak_phase else None,
        "rss_growth_gib": _gib(peak_phase["rss_growth_bytes"]) if peak_phase else None,
        "tokens_per_s": None if tokens_per_s is None else round(tokens_per_s, 3),
        "micro_step_time_s": None if micro_step_s is None else round(micro_step_s, 5),
        "step_time_s": None if step_time_s is None else round(step_time_s, 5),
        "timed_steps": timed_steps,
        "timed_micro_batch": timed["micro_batch"] if timed else None,
        "gpu_memory_gib": capacity.gib,
        "gpu_memory_source": capacity.source,
        "headroom": HEADROOM,
        "usable_gib": None if usable is None else round(usable, 4),
        "fits": fits,
        "load_failed": load_failed,
        # The preset's own micro-batch when it failed: that is the verdict; others are listed.
        "failed_micro_batch": mb
        if not own["ok"]
        else min((p["micro_batch"] for p in phases if not p["ok"]), default=None),
        "failed_micro_batches": [p["micro_batch"] for p in phases if not p["ok"]],
        "max_micro_batch": best,
        "max_micro_batch_how": how,
        "activation_gib_per_example": _gib(slope),
        "total_steps": total_steps,
        "eta_s": None if eta_s is None else round(eta_s, 1),
        "eta_longest_s": None if eta_longest_s is None else round(eta_longest_s, 1),
        "price_usd_per_h": price,
        "cost_usd": None if cost is None else round(cost, 4),
        "cost_longest_usd": None if cost_longest is None else round(cost_longest, 4),
        # The planner's figure for what was measured: the device peak on CUDA; on the CPU,
        # which has no CUDA context or caching allocator, torch's peak.
        "planned_peak_gib": None
        if option is None
        else round(option.device_peak_gib if on_cuda else option.torch_peak_gib, 4),
        "planned_device_peak_gib": None if option is None else round(option.device_peak_gib, 4),
        "planned_torch_peak_gib": None if option is None else round(option.torch_peak_gib, 4),
        "planned_tokens_per_s": None if option is None else round(option.tokens_per_s, 3),
        "planned_step_time_s": None if option is None else round(option.step_time_s, 5),
        "planned_fits": None if option is None else option.fits,
        "planned_eta_s": None if option is None or option.hours is None else option.hours * 3600,
        "planned_cost_usd": None if option is None else option.cost_usd,
        "planned_gpu": None if report is None or report.gpu is None else report.gpu.name,
        "plan_note": plan_note,
        "first_batch": {
            "micro_batch": first["micro_batch"],
            "rows": first["first_rows"],
            "tokens": first["first_rows_tokens"],
            "collated_tokens": (first.get("batch_rows") or [[]])[0],
        },
        "data": {
            "rows": measured["rows"],
            "mean_tokens": round(float(measured["mean_tokens"]), 2),
            "max_tokens": measured["max_tokens"],
        },
        "phases": [
            {
                "micro_batch": p["micro_batch"],
                "ok": p["ok"],
                "error": p["error"],
                "peak_gib": _gib(p["fit_bytes"]),
                "torch_allocated_gib": _gib(p["allocated_bytes"]),
                "torch_reserved_gib": _gib(p["reserved_bytes"]),
                "steps_done": p["steps_done"],
                "first_step_s": p["first_step_s"],
                "step_times_s": p["step_times_s"],
                "batch_tokens": p["batch_tokens"],
            }
            for p in phases
        ],
    }
    result["fix"] = _fix(preset, fits, best, option.fix if option is not None else None)
    result["verdict"] = verdict_line(result)
    return result


def fmt_gib(value: float | None) -> str:
    """GiB with the digits a small demo and an 80 GB card both need."""
    if value is None:
        return "-"
    if value >= 10:
        return f"{value:.1f} GiB"
    if value >= 0.1:
        return f"{value:.2f} GiB"
    return f"{value * 1024:.1f} MiB"


def verdict_line(result: dict[str, Any]) -> str:
    """One line: fits or not, with the figures that decide it."""
    mb = result["micro_batch"]
    peak = result["measured_peak_gib"]
    total = result["gpu_memory_gib"]
    if result["fits"] is False and peak is None:
        what = (
            LOAD_OOM
            if result.get("load_failed")
            else f"micro-batch {result['failed_micro_batch']} ran out of memory"
        )
        return f"does not fit: {what}" + (f" on {fmt_gib(total)}" if total else "")
    if result["fits"] is None:
        return (
            f"measured {fmt_gib(peak)} at micro-batch {mb}; no GPU memory to judge against "
            "(--gpu-memory-gib)"
        )
    word = "fits" if result["fits"] else "does not fit"
    return (
        f"{word}: {fmt_gib(peak)} measured at micro-batch {mb}, of {fmt_gib(result['usable_gib'])} "
        f"usable ({fmt_gib(total)} less {100 * result['headroom']:.0f} % headroom)"
    )
