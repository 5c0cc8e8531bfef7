"""A plan request from a preset: TRL's own argument names read the way TRL reads them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from planner.core import PlanRequest

if TYPE_CHECKING:  # the schema (pydantic) is loaded only by callers that have a preset
    from presets.schema import Preset

# TRL / transformers defaults for arguments a preset leaves out.
_DEFAULT_MAX_LENGTH = 1024
_DEFAULT_BATCH = 8
_DEFAULT_EPOCHS = 3.0
_STRATEGY = {"single": "ddp", "ddp": "ddp", "fsdp": "fsdp", "deepspeed-zero3": "zero3"}


def _precision(training: dict[str, Any], method: str) -> str:
    """The precision the runner trains in (`runner.train_build.load_dtype` picks the load dtype
    the same way): `bf16: true` trains bf16 weights, as TRL does with a bf16 checkpoint; an
    explicit float32 load means fp32 master weights under autocast; `fp16: true` over a full
    fine-tune is mixed precision over fp32 weights, over adapters an fp16 base."""
    init = training.get("model_init_kwargs") or {}
    dtype = str(init.get("dtype", init.get("torch_dtype", ""))).removeprefix("torch.")
    bf16, fp16 = bool(training.get("bf16")), bool(training.get("fp16"))
    if dtype in ("float32", "fp32"):
        return "bf16-mixed" if bf16 else "fp16-mixed" if fp16 else "fp32"
    if dtype in ("bfloat16", "bf16"):
        return "bf16"
    if dtype in ("float16", "fp16"):
        return "fp16"
    # no dtype named (or "auto"): what the runner loads
    if bf16:
        return "bf16"
    if fp16:
        return "fp16-mixed" if method == "full" else "fp16"
    return "fp32" if method == "full" else "bf16"  # "auto": the checkpoint's own 16-bit dtype


def request_from_preset(
    preset: Preset,
    gpu: str | None = None,
    gpu_memory_gib: float | None = None,
    num_gpus: int | None = None,
    examples: int | None = None,
    avg_tokens: int | None = None,
) -> PlanRequest:
    """The plan request a preset launches: its method, with its TRL arguments (a setting the
    preset leaves out is TRL's default, as the run will use it)."""
    from presets.locations import expand

    t = preset.training
    init = t.get("model_init_kwargs") or {}
    attn = str(init.get("attn_implementation", "sdpa"))
    attn = "flash" if attn.startswith("flash") else attn if attn in ("sdpa", "eager") else "sdpa"
    max_steps = t.get("max_steps")
    targets = preset.lora.target_modules
    return PlanRequest(
        model=expand(preset.model),
        methods=(preset.method,),
        trainer=preset.trainer,
        gpu=gpu if gpu is not None else preset.gpu,
        gpu_memory_gib=gpu_memory_gib,
        num_gpus=num_gpus
        if num_gpus is not None
        else preset.launch.num_gpus * preset.launch.nnodes,
        strategy=_STRATEGY[preset.launch.strategy],
        seq_len=int(t.get("max_length") or _DEFAULT_MAX_LENGTH),
        micro_batch=int(t.get("per_device_train_batch_size", _DEFAULT_BATCH)),
        grad_accum=int(t.get("gradient_accumulation_steps", 1)),
        grad_ckpt=bool(t.get("gradient_checkpointing", True)),
        attn=attn,
        precision=_precision(t, preset.method),
        optimizer=str(t.get("optim", "adamw_torch_fused")),
        lora_r=preset.lora.r,
        lora_alpha=preset.lora.alpha,
        lora_targets=targets if isinstance(targets, str) else ",".join(targets),
        lora_dropout=preset.lora.dropout,
        quant="nf4-dq" if preset.quantization.double_quant else "nf4",
        liger=bool(t.get("use_liger_kernel", False)),
        examples=examples,
        avg_tokens=avg_tokens,
        epochs=float(t.get("num_train_epochs", _DEFAULT_EPOCHS)),
        max_steps=int(max_steps) if max_steps is not None and int(max_steps) > 0 else None,
        price_usd_per_h=preset.price_usd_per_h,
        precompute_ref=bool(t.get("precompute_ref_log_probs", False)),
        stack="trl",  # a preset is launched by tunedeck's own training path
    )
