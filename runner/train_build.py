"""Building the TRL trainer of a run from its preset: data, model, adapter, arguments.

Imported only by `runner.train`, in the training process.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from presets import locations
from presets.schema import Preset
from runner.runs import CHECKPOINTS_DIR

# Fewer than two kept checkpoints leaves nothing to fall back to when the newest one is torn.
MIN_KEPT_CHECKPOINTS = 2


class BuildFailure(Exception):
    """A run that cannot be built as configured; the message says why in one line."""


def load_data(preset: Preset) -> tuple[Any, Any]:
    """The train and eval datasets, converted to what TRL expects."""
    from runner.data import DataError, load_training_data

    spec = preset.dataset.model_copy(
        update={
            "path": locations.expand(preset.dataset.path),
            "eval_path": locations.expand(preset.dataset.eval_path)
            if preset.dataset.eval_path
            else None,
        }
    )
    seed = int(preset.training.get("seed", 42))
    try:
        return load_training_data(spec, preset.trainer, seed=seed)
    except DataError as exc:
        raise BuildFailure("data: " + "; ".join(exc.lines[:5])) from None


def training_arguments(preset: Preset, run_dir: Path, world_size: int) -> Any:
    """TRL's SFTConfig or DPOConfig from the preset's `training`, with what tunedeck decides:
    where checkpoints go, CPU/precision when there is no GPU, and at least two kept checkpoints."""
    args, notes = training_argument_values(preset, run_dir, world_size)
    for note in notes:
        print(f"tunedeck: {note}", flush=True)
    return config_class(preset.trainer)(**args)


def config_class(trainer: str) -> Any:
    """TRL's argument class of a trainer name."""
    from trl import DPOConfig, SFTConfig

    return DPOConfig if trainer == "dpo" else SFTConfig


def training_argument_values(
    preset: Preset, run_dir: Path, world_size: int
) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments `training_arguments` gives TRL's config class, and the notes it
    prints about what it changed. `runner.config_check` builds the config from the same."""
    notes: list[str] = []
    args = dict(preset.training)
    args.pop("model_init_kwargs", None)  # the model is built here, see build_model
    args["output_dir"] = str(run_dir / CHECKPOINTS_DIR)
    args.setdefault("report_to", "none")
    # A progress bar redrawn with carriage returns makes an unreadable log file; the
    # per-log dictionaries are printed instead.
    args.setdefault("disable_tqdm", True)
    limit = args.get("save_total_limit")
    if isinstance(limit, int) and 0 < limit < MIN_KEPT_CHECKPOINTS:
        notes.append(
            f"save_total_limit {limit} raised to {MIN_KEPT_CHECKPOINTS}, so a torn "
            "newest checkpoint always has a complete one before it"
        )
        args["save_total_limit"] = MIN_KEPT_CHECKPOINTS
    if not torch.cuda.is_available():
        args["use_cpu"] = True
        # bf16 autocast on CPU is slow and not what a GPU run would do; train in fp32.
        for key in ("bf16", "fp16", "tf32"):
            args.pop(key, None)
        if world_size > 1:
            args["ddp_backend"] = "gloo"
    if preset.launch.nnodes > 1:
        # Each machine keeps its own run folder: each needs whole checkpoints to resume from.
        args.setdefault("save_on_each_node", True)
    _distributed_strategy(preset, args)
    from runner.train_eval_callbacks import evaluation_arguments

    args.update(evaluation_arguments(preset, args))
    return args, notes


def _distributed_strategy(preset: Preset, args: dict[str, Any]) -> None:
    """FSDP or DeepSpeed ZeRO-3 settings from `launch.strategy`, in transformers' own argument
    names, unless the preset already sets them. `ddp` needs nothing: torchrun plus the Trainer
    give data parallelism."""
    strategy = preset.launch.strategy
    if strategy == "fsdp" and "fsdp" not in args:
        args["fsdp"] = True
        config: dict[str, Any] = {
            "version": 2,
            "reshard_after_forward": True,  # full shard: parameters, gradients, optimizer
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer
            "cpu_ram_efficient_loading": True,  # rank 0 loads, the others get shards
            "state_dict_type": "SHARDED_STATE_DICT",  # checkpoints without gathering
        }
        # FSDP does its own activation checkpointing; the model-level one conflicts with it.
        if args.pop("gradient_checkpointing", True):
            config["activation_checkpointing"] = True
        args["gradient_checkpointing"] = False
        args.setdefault("fsdp_config", config)
    elif strategy == "deepspeed-zero3" and "deepspeed" not in args:
        # "auto" values are filled in by the Trainer from the TRL arguments.
        args["deepspeed"] = {
            "zero_optimization": {
                "stage": 3,
                "overlap_comm": True,
                "contiguous_gradients": True,
                "stage3_gather_16bit_weights_on_model_save": True,
            },
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }


def load_dtype(preset: Preset, on_gpu: bool) -> str:
    """The dtype the base model is loaded in when the preset's `model_init_kwargs` names none;
    the planner (`planner.from_preset`) plans the same. As TRL does: `bf16: true` trains the
    weights in bf16 (full fine-tuning included; name `dtype: float32` for fp32 master weights
    under bf16 autocast). `fp16: true` over a full fine-tune needs fp32 weights (the gradient
    scaler cannot unscale fp16 gradients); adapters over an fp16 base are fine. On a CPU
    everything is fp32."""
    if not on_gpu:
        return "float32"
    if preset.training.get("bf16"):
        return "bfloat16"
    if preset.training.get("fp16"):
        return "float32" if preset.method == "full" else "float16"
    return "float32" if preset.method == "full" else "auto"


def model_init_kwargs(preset: Preset, on_gpu: bool) -> dict[str, Any]:
    """The `from_pretrained` keyword arguments of the base model: dtype and attention as
    configured, the 4-bit quantisation config for QLoRA. With no attention named,
    transformers picks its default: SDPA where the model supports it, eager attention where
    it does not (Gemma 2, whose loader refuses SDPA)."""
    kwargs: dict[str, Any] = dict(preset.training.get("model_init_kwargs") or {})
    if "dtype" not in kwargs and "torch_dtype" not in kwargs:
        dtype = load_dtype(preset, on_gpu)
        kwargs["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    if preset.method == "qlora":
        from transformers import BitsAndBytesConfig

        quant = preset.quantization
        compute = getattr(torch, quant.compute_dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["dtype"] = compute
    return kwargs


def prepare_quantized(model: Any, preset: Preset) -> Any:
    """k-bit preparation of a 4-bit base (QLoRA) before the adapter goes on: the base frozen
    and, with gradient checkpointing, the embedding output made to require grad (so the
    checkpointed layers' recomputation has something to differentiate).

    PEFT's `prepare_model_for_kbit_training` does the same and also casts every parameter
    that is not 4-bit (embeddings, LM head, norms, and the fused MoE experts bitsandbytes
    leaves 16-bit) to fp32. None of them trains, so the upcast buys nothing for the adapter,
    and it costs twice their memory plus an fp32 residual stream (the fp32 norm weights
    promote every layer's output): for Llama 3.1 8B about 2 GiB more. TRL's trainers do not
    call it either; the planner plans these parameters in the compute dtype."""
    for param in model.parameters():
        param.requires_grad_(False)
    if preset.training.get("gradient_checkpointing", True):
        model.enable_input_require_grads()
    return model


def build_model(preset: Preset, model_path: str) -> Any:
    """The base model: dtype and attention as configured, 4-bit and k-bit preparation for
    QLoRA."""
    on_gpu = torch.cuda.is_available()
    if preset.method == "qlora" and not on_gpu:
        raise BuildFailure("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none was found")
    kwargs = model_init_kwargs(preset, on_gpu)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise BuildFailure(f"model {model_path}: cannot load ({first})") from None
    if preset.method == "qlora":
        model = prepare_quantized(model, preset)
    return model


def load_tokenizer(model_path: str) -> Any:
    """The base model's tokenizer (and chat template), padding with EOS when it has no pad."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_config(preset: Preset) -> Any:
    if preset.method == "full":
        return None
    from peft import LoraConfig

    spec = preset.lora
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )


def build_trainer(
    preset: Preset, run_dir: Path, callbacks: list[TrainerCallback], world_size: int = 1
) -> Any:
    """The TRL trainer for the run, with tunedeck's callbacks after transformers' own."""
    from trl import DPOTrainer, SFTTrainer

    model_path = locations.expand(preset.model)
    train_data, eval_data = load_data(preset)
    args = training_arguments(preset, run_dir, world_size)
    from runner.train_eval_callbacks import EvaluationSetupError, evaluation_callbacks

    try:
        callbacks = [*callbacks, *evaluation_callbacks(preset, run_dir, eval_data, world_size)]
    except EvaluationSetupError as exc:
        raise BuildFailure(str(exc)) from None
    if eval_data is None and args.eval_strategy != "no":
        print("tunedeck: no eval data; evaluation is turned off", flush=True)
        args.eval_strategy = "no"
    tokenizer = load_tokenizer(model_path)
    model = build_model(preset, model_path)
    common: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": train_data,
        "eval_dataset": eval_data,
        "processing_class": tokenizer,
        "peft_config": lora_config(preset),
        "callbacks": callbacks,
    }
    with warnings.catch_warnings():
        # Harmless on CPU ("pin_memory ... no accelerator"): keep the log readable.
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        if preset.trainer == "dpo":
            return DPOTrainer(ref_model=None, **common)
        return SFTTrainer(**common)
