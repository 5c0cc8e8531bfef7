"""The GPU catalogue and name matching (`H100`, `a100-40`, `NVIDIA A100-SXM4-40GB`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from planner.errors import PlanError

# Package data (config.json numbers and the GPU table), read on first use.
DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model."""

    name: str
    memory_gib: float
    """Total memory as NVML (and nvidia-smi) reports it, in GiB."""
    tflops: float
    """Dense bf16 (fp16 where there is no bf16) tensor-core TFLOPS, fp32 accumulation."""
    bandwidth_gbps: float
    """Memory bandwidth in GB/s."""
    bf16: bool
    price_usd_per_h: float | None
    """Typical on-demand price of one GPU for an hour; None when unknown (custom GPU)."""
    custom: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "memory_gib": self.memory_gib,
            "tflops": self.tflops,
            "bandwidth_gbps": self.bandwidth_gbps,
            "bf16": self.bf16,
            "price_usd_per_h": self.price_usd_per_h,
            "custom": self.custom,
        }


@lru_cache(maxsize=1)
def _catalogue() -> tuple[tuple[GpuSpec, tuple[str, ...]], ...]:
    text = (DATA_DIR / "gpus.json").read_text(encoding="utf-8")
    rows = json.loads(text)["gpus"]
    return tuple(
        (
            GpuSpec(
                name=r["name"],
                memory_gib=float(r["memory_gib"]),
                tflops=float(r["tflops"]),
                bandwidth_gbps=float(r["bandwidth_gbps"]),
                bf16=bool(r["bf16"]),
                price_usd_per_h=r["price_usd_per_h"],
            ),
            tuple(r["aliases"]),
        )
        for r in rows
    )


def gpu_catalogue() -> list[GpuSpec]:
    """Every catalogue GPU, biggest first."""
    return [spec for spec, _ in _catalogue()]


_NOISE = re.compile(r"nvidia|geforce|tesla|quadro|[^a-z0-9]")


def _compact(name: str) -> str:
    return _NOISE.sub("", name.lower())


def find_gpu(name: str) -> GpuSpec | None:
    """The catalogue GPU a name means, or None. Exact spellings first, then the longest
    alias the name starts with (so `h100 80gb hbm3` is the SXM card, `a100 80gb pcie` the
    80 GB A100)."""
    key = _compact(name)
    if not key:
        return None
    for spec, aliases in _catalogue():
        if key == _compact(spec.name) or key in aliases:
            return spec
    best: tuple[int, GpuSpec] | None = None
    for spec, aliases in _catalogue():
        for alias in aliases:
            if key.startswith(alias) and (best is None or len(alias) > best[0]):
                best = (len(alias), spec)
    return best[1] if best else None


def resolve_gpu(
    name: str | None, memory_gib: float | None, price_usd_per_h: float | None
) -> GpuSpec | None:
    """The GPU a request means: a catalogue GPU (its memory replaced when a size is given,
    as for a detected card), a custom one (a size is then required), or None (unknown)."""
    if memory_gib is not None and memory_gib <= 0:
        raise PlanError([f"gpu_memory_gib: must be positive, got {memory_gib}"])
    if price_usd_per_h is not None and price_usd_per_h < 0:
        raise PlanError([f"price: must be zero or more USD per hour, got {price_usd_per_h}"])
    if name is None or not name.strip():
        if memory_gib is None:
            return None
        return GpuSpec("custom GPU", memory_gib, 100.0, 1000.0, True, price_usd_per_h, True)
    spec = find_gpu(name)
    if spec is None:
        if memory_gib is None:
            known = ", ".join(s.name for s in gpu_catalogue())
            raise PlanError(
                [
                    f"gpu {name!r}: not in the catalogue ({known}); "
                    "give its memory too (--gpu-memory GIB) to plan for a custom GPU"
                ]
            )
        # A card the catalogue lacks: its size is known, speed is a mid-range guess.
        return GpuSpec(name.strip(), memory_gib, 100.0, 1000.0, True, price_usd_per_h, True)
    changes: dict[str, object] = {}
    if memory_gib is not None:
        changes["memory_gib"] = memory_gib
    if price_usd_per_h is not None:
        changes["price_usd_per_h"] = price_usd_per_h
    if not changes:
        return spec
    return GpuSpec(
        name=spec.name,
        memory_gib=float(changes.get("memory_gib", spec.memory_gib)),  # type: ignore[arg-type]
        tflops=spec.tflops,
        bandwidth_gbps=spec.bandwidth_gbps,
        bf16=spec.bf16,
        price_usd_per_h=changes.get("price_usd_per_h", spec.price_usd_per_h),  # type: ignore[arg-type]
    )
