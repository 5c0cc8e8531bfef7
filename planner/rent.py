"""Where to rent: per method, a short ranked list of catalogue GPUs (and counts) it fits on:
the cheapest in total, the fastest, and the cheapest per hour.

A rented box is paid from the moment it starts: the minutes to boot it and install the stack
(`box_start_min`) and to download the model's weights (the checkpoint's bytes over
`download_mb_per_s`) count at the box's price, beside the training itself."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from planner.arch import ModelSpec
from planner.gpus import gpu_catalogue
from planner.memory import GIB, estimate_memory
from planner.request import PlanRequest, memory_settings
from planner.speed import time_on, workload

GPU_COUNTS = (1, 2, 4, 8)
# A plan fits when its device peak leaves this share of the card free: the allocator
# needs room for a batch longer than the average, and the driver keeps a little.
HEADROOM = 0.05
# Hub checkpoints of these models are 16-bit safetensors; QLoRA quantises them on load, so
# it downloads the same bytes.
CHECKPOINT_BYTES_PER_PARAM = 2
PICKS = ("cheapest", "fastest", "lowest $/h")


@dataclass(frozen=True)
class RentOption:
    method: str
    gpu: str
    count: int
    device_peak_gib: float
    price_usd_per_h: float
    """Per GPU."""
    tokens_per_s: float
    setup_hours: float
    """Starting the box and downloading the weights, before training."""
    hours: float | None
    """Training only; None when the data size is unknown."""
    cost_usd: float | None
    """Setup and training at the box's price (all its GPUs)."""
    picks: tuple[str, ...]
    """Which of `PICKS` this option is."""

    @property
    def box_usd_per_h(self) -> float:
        return self.price_usd_per_h * self.count

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "picks": list(self.picks),
            "gpu": self.gpu,
            "count": self.count,
            "device_peak_gib": round(self.device_peak_gib, 2),
            "price_usd_per_h": self.price_usd_per_h,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "setup_hours": round(self.setup_hours, 3),
            "hours": None if self.hours is None else round(self.hours, 3),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 2),
        }


def setup_hours(spec: ModelSpec, r: PlanRequest) -> float:
    """Hours from renting a box to the first training step."""
    download_s = spec.total_params * CHECKPOINT_BYTES_PER_PARAM / (r.download_mb_per_s * 1e6)
    return r.box_start_min / 60 + download_s / 3600


def _trial(r: PlanRequest, count: int) -> PlanRequest:
    strategy = r.strategy if r.strategy != "ddp" else "fsdp"
    return replace(r, num_gpus=count, strategy=strategy if count > 1 else "ddp")


def _pick(chosen: dict[tuple[str, int], RentOption], label: str, best: RentOption) -> None:
    key = (best.gpu, best.count)
    held = chosen.get(key, best)
    chosen[key] = replace(held, picks=(*held.picks, label))


def renting(
    spec: ModelSpec, r: PlanRequest, targets: tuple[str, ...], tokens: float | None
) -> list[RentOption]:
    """Per method, the cheapest in total (when the data size is known), the fastest (setup
    included) and the cheapest per hour, among catalogue GPUs with a price, from the
    smallest count each fits on up to 8. One option holding several picks is listed once.
    Memory depends on the count, not the card, so it is estimated once per count."""
    out: list[RentOption] = []
    setup = setup_hours(spec, r)
    for method in dict.fromkeys(r.methods):
        peaks = {
            count: estimate_memory(
                spec, memory_settings(_trial(r, count), method, targets)
            ).device_peak_bytes
            / GIB
            for count in GPU_COUNTS
        }
        works = {count: workload(spec, _trial(r, count), method) for count in GPU_COUNTS}
        candidates: list[RentOption] = []
        for gpu in gpu_catalogue():
            if gpu.price_usd_per_h is None:
                continue
            fitting = [c for c in GPU_COUNTS if peaks[c] <= gpu.memory_gib * (1 - HEADROOM)]
            for count in fitting:
                speed = time_on(works[count], gpu)
                hours = None if tokens is None else tokens / speed.tokens_per_s / 3600
                cost = None if hours is None else (setup + hours) * gpu.price_usd_per_h * count
                candidates.append(
                    RentOption(
                        method=method,
                        gpu=gpu.name,
                        count=count,
                        device_peak_gib=peaks[count],
                        price_usd_per_h=gpu.price_usd_per_h,
                        tokens_per_s=speed.tokens_per_s,
                        setup_hours=setup,
                        hours=hours,
                        cost_usd=cost,
                        picks=(),
                    )
                )
        if not candidates:
            continue
        chosen: dict[tuple[str, int], RentOption] = {}
        if tokens is not None:
            _pick(chosen, "cheapest", min(candidates, key=lambda o: (o.cost_usd, o.box_usd_per_h)))
            _pick(chosen, "fastest", min(candidates, key=lambda o: o.setup_hours + (o.hours or 0)))
        else:
            _pick(chosen, "fastest", max(candidates, key=lambda o: o.tokens_per_s))
        _pick(
            chosen, "lowest $/h", min(candidates, key=lambda o: (o.box_usd_per_h, -o.tokens_per_s))
        )
        out += sorted(chosen.values(), key=lambda o: min(PICKS.index(p) for p in o.picks))
    return out
