"""The plan request, defined once: every field with its flag, its help (with the unit), its
choices and its default. The command line's flags, the JSON echo of a request and the app's
form are all derived from these fields, so the same inputs plan the same everywhere."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from typing import Any

from planner.memory import PRECISIONS, MemorySettings

METHODS = ("full", "lora", "qlora")
TRAINERS = ("sft", "dpo")
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
ATTNS = ("sdpa", "flash", "eager")
QUANTS = ("nf4", "nf4-dq")
STACKS = ("trl", "hf")
"""`trl`: tunedeck's own training path (TRL's fused, chunked LM head and loss: the full logits
are never built). `hf`: a plain transformers / HF Trainer loop whose model computes its own
loss over the full logits, for people planning their own script."""


@dataclass(frozen=True)
class FieldInfo:
    """How one request field meets people: its flag, its help and (for a closed set) its
    choices. The type and the default come from the dataclass field itself."""

    flag: str
    help: str
    """What the value means, with its unit."""
    label: str
    """The few characters the app's form shows before the field."""
    choices: tuple[str, ...] | None = None
    unset: str = "not given"
    """What leaving an optional field out means."""


def _info(
    flag: str,
    help: str,
    label: str,
    choices: tuple[str, ...] | None = None,
    unset: str = "not given",
) -> Any:
    return {"info": FieldInfo(flag, help, label, choices, unset)}


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan depends on (see `request_from_preset` to build one from a preset)."""

    model: str = field(
        metadata=_info(
            "--model",
            "hub id, local model folder or config.json",
            "model",
            unset="the preset's; one of the two is needed",
        )
    )
    methods: tuple[str, ...] = field(
        default=METHODS,
        metadata=_info(
            "--method", "full, lora or qlora (repeat or comma-separate)", "method", METHODS
        ),
    )
    trainer: str = field(
        default="sft", metadata=_info("--trainer", "sft or dpo (TRL trainer)", "trainer", TRAINERS)
    )
    gpu: str | None = field(
        default=None,
        metadata=_info(
            "--gpu", "GPU name, e.g. H100, 'A100 40GB', RTX 4090", "gpu", unset="the detected one"
        ),
    )
    gpu_memory_gib: float | None = field(
        default=None,
        metadata=_info(
            "--gpu-memory",
            "GiB of memory per GPU (a custom GPU, or the size detected)",
            "GiB",
            unset="the detected or the catalogue's size",
        ),
    )
    num_gpus: int = field(default=1, metadata=_info("--num-gpus", "GPUs per run", "GPUs"))
    strategy: str = field(
        default="ddp",
        metadata=_info(
            "--strategy",
            "how several GPUs share the run: ddp (replicated), zero2, fsdp or zero3 (sharded)",
            "split",
            STRATEGIES,
        ),
    )
    seq_len: int = field(
        default=2048,
        metadata=_info("--seq-len", "tokens per sequence at most (max_length)", "seq"),
    )
    micro_batch: int = field(
        default=1,
        metadata=_info(
            "--micro-batch", "sequences per GPU per pass (per_device_train_batch_size)", "batch"
        ),
    )
    grad_accum: int = field(
        default=1,
        metadata=_info(
            "--grad-accum",
            "micro-batches per optimizer step (gradient_accumulation_steps)",
            "accum",
        ),
    )
    grad_ckpt: bool = field(
        default=True,
        metadata=_info("--grad-ckpt", "gradient checkpointing (recompute each layer)", "ckpt"),
    )
    attn: str = field(default="sdpa", metadata=_info("--attn", "attention kernel", "attn", ATTNS))
    precision: str = field(
        default="bf16",
        metadata=_info(
            "--precision",
            "bf16 (weights and states in bf16, as TRL trains a bf16 checkpoint), fp16 (an fp16 "
            "base under adapters), bf16-mixed or fp16-mixed (fp32 master weights), or fp32",
            "dtype",
            PRECISIONS,
        ),
    )
    optimizer: str = field(
        default="adamw_torch_fused",
        metadata=_info(
            "--optimizer",
            "TRL optim name, e.g. adamw_torch_fused, adamw_torch, adamw_8bit, paged_adamw_8bit, "
            "adafactor",
            "optim",
        ),
    )
    lora_r: int = field(default=16, metadata=_info("--lora-r", "LoRA rank", "r"))
    lora_alpha: int = field(
        default=32, metadata=_info("--lora-alpha", "LoRA scale numerator (alpha / r)", "alpha")
    )
    lora_targets: str = field(
        default="all-linear",
        metadata=_info(
            "--lora-targets", "q,v | all-linear | module names (q,k,v,o,gate,up,down)", "targets"
        ),
    )
    lora_dropout: float = field(
        default=0.05,
        metadata=_info(
            "--lora-dropout",
            "dropout on the adapter input, 0 to below 1 (above 0 each wrapped input keeps a "
            "dropped-out copy and a mask)",
            "dropout",
        ),
    )
    quant: str = field(
        default="nf4-dq",
        metadata=_info(
            "--quant", "QLoRA 4-bit: nf4, or nf4-dq (double quantisation)", "quant", QUANTS
        ),
    )
    liger: bool = field(
        default=False,
        metadata=_info("--liger", "Liger's fused kernels (use_liger_kernel)", "liger"),
    )
    stack: str = field(
        default="trl",
        metadata=_info(
            "--stack",
            "trl: tunedeck's own training path (TRL's fused, chunked LM head and loss); hf: a "
            "plain transformers / HF Trainer loop that builds the full logits (your own script)",
            "stack",
            STACKS,
        ),
    )
    precompute_ref: bool = field(
        default=False,
        metadata=_info(
            "--precompute-ref",
            "DPO: reference log-probs computed before training (no reference model in memory)",
            "pre-ref",
        ),
    )
    examples: int | None = field(
        default=None, metadata=_info("--examples", "training examples (rows)", "examples")
    )
    avg_tokens: int | None = field(
        default=None,
        metadata=_info("--avg-tokens", "mean tokens per example", "tok/ex", unset="--seq-len"),
    )
    dataset_tokens: int | None = field(
        default=None,
        metadata=_info(
            "--dataset-tokens", "tokens in the whole dataset (instead of --examples)", "tokens"
        ),
    )
    epochs: float = field(default=1.0, metadata=_info("--epochs", "passes over the data", "epochs"))
    max_steps: int | None = field(
        default=None,
        metadata=_info(
            "--max-steps", "optimizer steps (overrides --epochs)", "steps", unset="from --epochs"
        ),
    )
    price_usd_per_h: float | None = field(
        default=None,
        metadata=_info("--price", "USD per GPU-hour", "$/h", unset="the catalogue's"),
    )
    box_start_min: float = field(
        default=5.0,
        metadata=_info(
            "--box-start",
            "minutes from renting a box to its first command (boot, drivers, installing the "
            "stack), paid at the box's price; renting view",
            "start min",
        ),
    )
    download_mb_per_s: float = field(
        default=100.0,
        metadata=_info(
            "--download-speed",
            "MB/s (1e6 bytes) at which a rented box downloads the model's weights; renting view",
            "MB/s",
        ),
    )


@dataclass(frozen=True)
class RequestField:
    """One field of the request as the front ends see it."""

    name: str
    kind: str
    """`str`, `int`, `float`, `bool` or `methods` (a tuple of method names)."""
    optional: bool
    """None is a valid value (the field is then not given)."""
    default: Any
    info: FieldInfo

    def default_text(self) -> str:
        return format_value(self, self.default)


_KINDS = {
    "str": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "tuple[str, ...]": "methods",
}


@lru_cache(maxsize=1)
def request_fields() -> tuple[RequestField, ...]:
    """Every field of `PlanRequest`, in order, with its kind read from its annotation."""
    out = []
    for f in fields(PlanRequest):
        annotation = str(f.type)
        optional = annotation.endswith("| None")
        kind = _KINDS[annotation.removesuffix("| None").strip()]
        default = None if f.default is MISSING else f.default
        out.append(RequestField(f.name, kind, optional, default, f.metadata["info"]))
    return tuple(out)


def request_field(name: str) -> RequestField:
    return next(f for f in request_fields() if f.name == name)


def format_value(spec: RequestField, value: Any) -> str:
    """A value as a person types it (the inverse of `parse_value`)."""
    if value is None:
        return ""
    if spec.kind == "methods":
        return ",".join(value)
    if spec.kind == "bool":
        return "on" if value else "off"
    if spec.kind == "float":
        return f"{value:g}"
    return str(value)


def parse_value(spec: RequestField, text: str) -> Any:
    """Text typed for a field, as the field's type; ValueError says what would be right."""
    text = text.strip()
    if not text:
        if spec.optional:
            return None
        raise ValueError("give a value")
    if spec.kind == "int":
        cleaned = text.replace(",", "").replace("_", "")
        if not cleaned.lstrip("-").isdigit():
            raise ValueError(f"expected a whole number, got {text!r}")
        return int(cleaned)
    if spec.kind == "float":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {text!r}")
        return number
    if spec.kind == "bool":
        lowered = text.lower()
        if lowered in ("on", "true", "yes", "1"):
            return True
        if lowered in ("off", "false", "no", "0"):
            return False
        raise ValueError(f"expected on or off, got {text!r}")
    if spec.kind == "methods":
        names = tuple(m.strip() for m in text.split(",") if m.strip())
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not one of {', '.join(METHODS)}")
        return names
    if spec.info.choices is not None and text not in spec.info.choices:
        raise ValueError(f"{text!r} is not one of {', '.join(spec.info.choices)}")
    return text


def request_json(request: PlanRequest) -> dict[str, Any]:
    """Every field of the request, under its own name (the echo in `plan --json`)."""
    out: dict[str, Any] = {}
    for spec in request_fields():
        value = getattr(request, spec.name)
        out[spec.name] = list(value) if isinstance(value, tuple) else value
    return out


def tokens_per_seq(r: PlanRequest) -> int:
    """Tokens of one sequence: the mean example length, at most the sequence length."""
    return min(r.avg_tokens, r.seq_len) if r.avg_tokens else r.seq_len


def memory_settings(r: PlanRequest, method: str, targets: tuple[str, ...]) -> MemorySettings:
    """The part of a request that decides memory, for one method."""
    return MemorySettings(
        method=method,
        trainer=r.trainer,
        num_gpus=r.num_gpus,
        strategy=r.strategy if r.num_gpus > 1 else "ddp",
        seq_len=r.seq_len,
        micro_batch=r.micro_batch,
        grad_accum=r.grad_accum,
        grad_ckpt=r.grad_ckpt,
        attn=r.attn,
        precision=r.precision,
        optimizer=r.optimizer,
        lora_r=r.lora_r,
        lora_targets=targets,
        lora_dropout=r.lora_dropout,
        quant=r.quant,
        liger=r.liger,
        # the memory model's name for the training stack; both stacks run PEFT adapters
        framework=r.stack,
        precompute_ref=r.precompute_ref,
    )
