"""The plan: memory, time and cost per method, the recommendation and the fixes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from planner.arch import ModelSpec, load_model, lora_modules, parse_targets
from planner.errors import PlanError
from planner.gpus import GpuSpec, find_gpu, resolve_gpu
from planner.memory import (
    GIB,
    OPTIMIZERS,
    PRECISIONS,
    MemoryEstimate,
    estimate_memory,
    optimizer_state_bytes,
)
from planner.rent import GPU_COUNTS, HEADROOM, RentOption, renting, setup_hours
from planner.request import (
    ATTNS,
    METHODS,
    QUANTS,
    STACKS,
    STRATEGIES,
    TRAINERS,
    PlanRequest,
    memory_settings,
    request_json,
    tokens_per_seq,
)
from planner.speed import REFERENCE_GPU, estimate_speed

__all__ = [
    "ATTNS",
    "GPU_COUNTS",
    "HEADROOM",
    "METHODS",
    "METHOD_LABELS",
    "QUANTS",
    "STACKS",
    "STRATEGIES",
    "MethodPlan",
    "PlanReport",
    "PlanRequest",
    "RentOption",
    "plan",
    "total_tokens",
]

METHOD_LABELS = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}


@dataclass(frozen=True)
class MethodPlan:
    method: str
    fits: bool | None
    torch_peak_gib: float
    device_peak_gib: float
    breakdown: dict[str, float]
    tokens_per_s: float
    step_time_s: float
    hours: float | None
    cost_usd: float | None
    fix: str | None = None
    trainable_params: int = 0
    spare_gib: float | None = None
    allocated_peak_gib: float = 0.0
    """What torch.cuda.max_memory_allocated would report (torch peak less the allocator)."""
    utilisation: float = 0.0
    """Training FLOPs per second over the GPUs' dense tensor peak."""
    bound: str = ""
    """What limits a micro-batch: compute, memory or host."""
    step_breakdown_s: dict[str, float] = field(default_factory=dict)
    """Seconds of one optimizer step per cause, on one GPU."""

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "fits": self.fits,
            "torch_peak_gib": round(self.torch_peak_gib, 2),
            "allocated_peak_gib": round(self.allocated_peak_gib, 2),
            "device_peak_gib": round(self.device_peak_gib, 2),
            "spare_gib": None if self.spare_gib is None else round(self.spare_gib, 2),
            "breakdown": {k: round(v, 3) for k, v in self.breakdown.items()},
            "trainable_params": self.trainable_params,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "step_time_s": round(self.step_time_s, 4),
            "step_breakdown_s": {k: round(v, 4) for k, v in self.step_breakdown_s.items()},
            "utilisation": round(self.utilisation, 3),
            "bound": self.bound,
            "hours": None if self.hours is None else round(self.hours, 3),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 2),
            "fix": self.fix,
        }


@dataclass(frozen=True)
class PlanReport:
    request: PlanRequest
    model: ModelSpec
    recommended: str | None
    reason: str
    options: list[MethodPlan]
    gpu: GpuSpec | None
    renting: list[RentOption]
    total_tokens: float | None
    speed_gpu: str = REFERENCE_GPU
    """The card the times are for: the chosen GPU, or the reference card when none is."""
    setup_hours: float = 0.0
    """Renting view: starting a box and downloading the weights."""

    def option(self, method: str) -> MethodPlan | None:
        return next((o for o in self.options if o.method == method), None)

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "recommended": self.recommended,
            "reason": self.reason,
            "request": request_json(r),
            "model": {
                "name": self.model.name,
                "params": self.model.total_params,
                "params_by_kind": self.model.params_by_kind(),
            },
            "gpu": None if self.gpu is None else {**self.gpu.to_json(), "count": r.num_gpus},
            "speed_gpu": self.speed_gpu,
            "total_tokens": self.total_tokens,
            "options": [o.to_json() for o in self.options],
            "renting": {
                "box_start_min": r.box_start_min,
                "download_mb_per_s": r.download_mb_per_s,
                "setup_hours": round(self.setup_hours, 3),
                "options": [o.to_json() for o in self.renting],
            },
        }


# ----------------------------------------------------------------------------- checks


def _check(request: PlanRequest) -> list[str]:
    r = request
    problems: list[str] = []

    def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            problems.append(f"{name}: {value!r} is not one of {', '.join(allowed)}")

    for m in r.methods:
        choice("method", m, METHODS)
    if not r.methods:
        problems.append("methods: give at least one of full, lora, qlora")
    choice("trainer", r.trainer, TRAINERS)
    choice("strategy", r.strategy, STRATEGIES)
    choice("attn", r.attn, ATTNS)
    choice("precision", r.precision, PRECISIONS)
    if optimizer_state_bytes(r.optimizer, 2) is None:
        problems.append(
            f"optimizer: {r.optimizer!r} is not known; use one of {', '.join(OPTIMIZERS)} "
            "(or another TRL optim name such as lion_8bit, rmsprop, ademamix)"
        )
    choice("quant", r.quant, QUANTS)
    choice("stack", r.stack, STACKS)
    for name in ("num_gpus", "seq_len", "micro_batch", "grad_accum", "lora_r", "lora_alpha"):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{name}: must be a positive integer, got {value!r}")
    for name in ("examples", "avg_tokens", "dataset_tokens", "max_steps"):
        value = getattr(r, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            problems.append(f"{name}: must be a positive integer, got {value!r}")
    if not (isinstance(r.epochs, (int, float)) and r.epochs > 0 and math.isfinite(r.epochs)):
        problems.append(f"epochs: must be a positive number, got {r.epochs!r}")
    if not 0 <= r.lora_dropout < 1:
        problems.append(f"lora_dropout: must be in [0, 1), got {r.lora_dropout!r}")
    if not (math.isfinite(r.box_start_min) and r.box_start_min >= 0):
        problems.append(f"box_start_min: must be zero or more minutes, got {r.box_start_min!r}")
    if not (math.isfinite(r.download_mb_per_s) and r.download_mb_per_s > 0):
        problems.append(f"download_mb_per_s: must be more than 0 MB/s, got {r.download_mb_per_s!r}")
    if r.seq_len > 1_048_576:
        problems.append(f"seq_len: {r.seq_len} tokens is beyond any model here (max 1048576)")
    return problems


# ----------------------------------------------------------------------------- one method


# `memory_settings` under its former name, for callers that build the memory settings of a plan
_settings = memory_settings


def total_tokens(r: PlanRequest) -> float | None:
    """Training tokens over the whole run, when the data size is known."""
    per_step = r.micro_batch * r.grad_accum * r.num_gpus * tokens_per_seq(r)
    if r.trainer == "dpo":
        per_step *= 2
    if r.max_steps is not None:
        return float(r.max_steps * per_step)
    data = None
    if r.dataset_tokens is not None:
        data = float(r.dataset_tokens)
    elif r.examples is not None:
        data = float(r.examples * tokens_per_seq(r))
        if r.trainer == "dpo":
            data *= 2
    return None if data is None else data * r.epochs


def _speed_gpu(gpu: GpuSpec | None) -> GpuSpec:
    """The card times are planned on: the chosen one, or the reference card."""
    if gpu is not None:
        return gpu
    reference = find_gpu(REFERENCE_GPU)
    assert reference is not None, "the reference card is in the catalogue"
    return reference


def _one(
    spec: ModelSpec, r: PlanRequest, method: str, gpu: GpuSpec | None, targets: tuple[str, ...]
) -> tuple[MethodPlan, MemoryEstimate]:
    mem = estimate_memory(spec, memory_settings(r, method, targets))
    speed = estimate_speed(spec, r, method, _speed_gpu(gpu))
    tokens = total_tokens(r)
    hours = None if tokens is None else tokens / speed.tokens_per_s / 3600
    price = r.price_usd_per_h
    if price is None and gpu is not None:
        price = gpu.price_usd_per_h
    cost = None if hours is None or price is None else hours * price * r.num_gpus
    device_gib = mem.device_peak_bytes / GIB
    fits = None
    spare = None
    if gpu is not None:
        spare = gpu.memory_gib - device_gib
        fits = device_gib <= gpu.memory_gib * (1 - HEADROOM)
    plan = MethodPlan(
        method=method,
        fits=fits,
        torch_peak_gib=mem.torch_peak_bytes / GIB,
        device_peak_gib=device_gib,
        breakdown={k: v / GIB for k, v in mem.breakdown_bytes.items() if abs(v) > 0},
        tokens_per_s=speed.tokens_per_s,
        step_time_s=speed.step_time_s,
        hours=hours,
        cost_usd=cost,
        trainable_params=mem.trainable_params,
        spare_gib=spare,
        allocated_peak_gib=mem.allocated_peak_bytes / GIB,
        utilisation=speed.utilisation,
        bound=speed.bound,
        step_breakdown_s=speed.breakdown_s,
    )
    return plan, mem


def _fits(
    spec: ModelSpec, r: PlanRequest, method: str, gpu: GpuSpec, targets: tuple[str, ...]
) -> float | None:
    """Device peak in GiB when this request fits the GPU, else None."""
    mem = estimate_memory(spec, memory_settings(r, method, targets))
    peak = mem.device_peak_bytes / GIB
    return peak if peak <= gpu.memory_gib * (1 - HEADROOM) else None


def _fmt_hours(hours: float | None) -> str:
    if hours is None:
        return ""
    minutes = round(hours * 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _describe(r: PlanRequest, trial: PlanRequest, method: str, new_method: str) -> str:
    """What changed from the request, in the words (and flags) a user would use."""
    parts = []
    if new_method != method:
        parts.append(f"{METHOD_LABELS[new_method]} instead of {METHOD_LABELS[method]}")
    if trial.micro_batch != r.micro_batch:
        parts.append(
            f"micro-batch {trial.micro_batch} x accumulation {trial.grad_accum} "
            "(same effective batch)"
        )
    if trial.grad_ckpt and not r.grad_ckpt:
        parts.append("gradient checkpointing (--grad-ckpt)")
    if trial.optimizer != r.optimizer:
        parts.append(f"the 8-bit optimizer (--optimizer {trial.optimizer})")
    if trial.liger and not r.liger:
        parts.append("Liger kernels (--liger)")
    if trial.seq_len != r.seq_len:
        parts.append(f"a shorter sequence (--seq-len {trial.seq_len})")
    return " + ".join(parts)


def _find_fix(
    spec: ModelSpec, r: PlanRequest, method: str, gpu: GpuSpec, targets: tuple[str, ...]
) -> str | None:
    """The cheapest change that makes `method` fit, checked by planning it again. Changes
    that keep the training the same come first (a smaller micro-batch with more accumulation,
    checkpointing, the 8-bit optimizer, Liger's kernels), then a shorter sequence, QLoRA,
    and more GPUs."""

    def halvings(base: PlanRequest) -> list[PlanRequest]:
        out = []
        mb = base.micro_batch
        while mb > 1:
            mb //= 2
            out.append(replace(base, micro_batch=mb, grad_accum=r.micro_batch * r.grad_accum // mb))
        return out

    trials: list[tuple[PlanRequest, str]] = [(t, method) for t in halvings(r)]
    step = r
    if not r.grad_ckpt:
        step = replace(r, grad_ckpt=True)
        trials += [(t, method) for t in [step, *halvings(step)]]
    step = replace(step, micro_batch=1, grad_accum=r.micro_batch * r.grad_accum)
    if method == "full" and "8bit" not in r.optimizer:
        step = replace(step, optimizer="adamw_8bit")
        trials.append((step, method))
    if not r.liger:
        step = replace(step, liger=True)
        trials.append((step, method))
    seq = r.seq_len
    while seq > 512:
        seq //= 2
        trials.append((replace(step, seq_len=seq), method))
    if method == "lora":
        trials += [(r, "qlora"), (replace(r, grad_ckpt=True), "qlora")]
    for trial, m in trials:
        peak = _fits(spec, trial, m, gpu, targets)
        if peak is not None:
            return f"{_describe(r, trial, method, m)}: {peak:.1f} GiB"
    effective = r.micro_batch * r.grad_accum * r.num_gpus
    for count in GPU_COUNTS:
        if count <= r.num_gpus:
            continue
        for mb, ckpt in ((r.micro_batch, r.grad_ckpt), (1, True)):
            # keep the effective batch (micro-batch x accumulation x GPUs) where it divides
            ga = max(1, effective // (mb * count))
            trial = replace(
                r, num_gpus=count, strategy="fsdp", micro_batch=mb, grad_accum=ga, grad_ckpt=ckpt
            )
            peak = _fits(spec, trial, method, gpu, targets)
            if peak is None:
                continue
            plan, _ = _one(spec, trial, method, gpu, targets)
            extra = ""
            if plan.hours is not None:
                extra = f", {_fmt_hours(plan.hours)}"
                if plan.cost_usd is not None:
                    extra += f", ${plan.cost_usd:,.2f}"
            what = f"{count}x {gpu.name} with FSDP, micro-batch {mb} x accumulation {ga}"
            if mb * ga * count != effective:
                what += f" (effective batch {mb * ga * count} instead of {effective})"
            if ckpt and not r.grad_ckpt:
                what += " + gradient checkpointing (--grad-ckpt)"
            return f"{what}: {peak:.1f} GiB per GPU{extra}"
    return f"nothing tried fits on up to {GPU_COUNTS[-1]}x {gpu.name}; see the renting view"


def _shortfall(peak_gib: float, gpu: GpuSpec) -> str:
    if peak_gib > gpu.memory_gib:
        return f"needs {peak_gib:.1f} GiB, {peak_gib / gpu.memory_gib:.2f}x this GPU"
    return (
        f"needs {peak_gib:.1f} GiB of {gpu.memory_gib:.1f}, less than the "
        f"{100 * HEADROOM:.0f} % headroom a run needs"
    )


def _reason(
    options: list[MethodPlan],
    gpu: GpuSpec | None,
    recommended: str | None,
    num_gpus: int,
    room: str = "",
) -> str:
    if gpu is None:
        return (
            f"no GPU detected or named: memory for every method, times on one {REFERENCE_GPU}, "
            "and where to rent"
        )
    where = f"{num_gpus}x {gpu.name}" if num_gpus > 1 else gpu.name
    if recommended is None:
        smallest = min(options, key=lambda o: o.device_peak_gib)
        return (
            f"nothing fits on {where}: {METHOD_LABELS[smallest.method]} "
            f"{_shortfall(smallest.device_peak_gib, gpu)}; see the fixes"
        )
    best = next(o for o in options if o.method == recommended)
    text = f"{METHOD_LABELS[recommended]} fits with {best.spare_gib:.1f} GiB to spare{room}"
    others = []
    for o in options:
        if o.method == recommended:
            continue
        if not o.fits:
            others.append(f"{METHOD_LABELS[o.method]} {_shortfall(o.device_peak_gib, gpu)}")
        else:
            change = o.tokens_per_s / best.tokens_per_s - 1 if best.tokens_per_s else 0.0
            pace = f"{abs(100 * change):.0f} % {'faster' if change > 0 else 'slower'}"
            if recommended == "full":
                # full trains every weight; the adapters are the cheaper alternative
                others.append(f"{METHOD_LABELS[o.method]} also fits ({pace})")
            elif o.method == "qlora":
                others.append(f"{METHOD_LABELS[o.method]} saves memory not needed here ({pace})")
            else:
                others.append(f"{METHOD_LABELS[o.method]} fits too ({pace})")
    return text + ("; " + "; ".join(others) if others else "")


def _batch_room(
    spec: ModelSpec, r: PlanRequest, method: str, gpu: GpuSpec, targets: tuple[str, ...]
) -> str:
    """The largest micro-batch (doubling, up to 8x) that still fits: room to go faster."""
    best = r.micro_batch
    mb = r.micro_batch * 2
    while mb <= r.micro_batch * 8:
        if _fits(spec, replace(r, micro_batch=mb), method, gpu, targets) is None:
            break
        best = mb
        mb *= 2
    return f" (room for micro-batch {best})" if best > r.micro_batch else ""


def _bf16_note(gpu: GpuSpec | None, precision: str) -> str:
    if gpu is not None and not gpu.bf16 and precision in ("bf16", "bf16-mixed"):
        return f"; {gpu.name} has no bf16: train in fp16 (--precision fp16-mixed)"
    return ""


def _moe_note(spec: ModelSpec, r: PlanRequest) -> str:
    if spec.num_experts and "qlora" in r.methods:
        return (
            "; QLoRA leaves this model's fused experts in bf16 (bitsandbytes quantises "
            "nn.Linear only under transformers 5)"
        )
    return ""


def plan(request: PlanRequest) -> PlanReport:
    """Plan every requested method for a model, GPU and data size."""
    problems = _check(request)
    if problems:
        raise PlanError(problems)
    spec = load_model(request.model)
    targets = parse_targets(request.lora_targets)
    if any(m != "full" for m in request.methods):
        lora_modules(spec, targets)  # unknown target names are bad input
    gpu = resolve_gpu(request.gpu, request.gpu_memory_gib, request.price_usd_per_h)
    options: list[MethodPlan] = []
    for method in dict.fromkeys(request.methods):
        option, _ = _one(spec, request, method, gpu, targets)
        if gpu is not None and option.fits is False:
            option = replace(option, fix=_find_fix(spec, request, method, gpu, targets))
        options.append(option)
    recommended = None
    if gpu is not None:
        fitting = [o for o in options if o.fits]
        if fitting:
            recommended = min(fitting, key=lambda o: METHODS.index(o.method)).method
    rent = renting(spec, request, targets, total_tokens(request))
    room = ""
    if gpu is not None and recommended is not None:
        room = _batch_room(spec, request, recommended, gpu, targets)
    return PlanReport(
        request=request,
        model=spec,
        recommended=recommended,
        reason=_reason(options, gpu, recommended, request.num_gpus, room)
        + _bf16_note(gpu, request.precision)
        + _moe_note(spec, request),
        options=options,
        gpu=gpu,
        renting=rent,
        total_tokens=total_tokens(request),
        speed_gpu=_speed_gpu(gpu).name,
        setup_hours=setup_hours(spec, request),
    )
