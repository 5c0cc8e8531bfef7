"""Training FLOPs per token and the throughput a GPU reaches on them.

FLOPs: a matmul costs 2 FLOPs per weight per token forward. The backward pass costs twice
the forward when weights train (input and weight gradients) and once when they are frozen
(input gradients only; LoRA's own matmuls are small). Causal attention adds 4 x layers x
q_dim x (seq_len / 2) FLOPs per token forward, and its backward is always 2x. Gradient
checkpointing runs the forward twice.

Utilisation (model FLOPs / peak dense tensor FLOPs) is what well-tuned runs reach:
MosaicML's llm-foundry measured 46-64 % MFU for 7B full training (H100 / A100); adapter
runs spend more time in memory-bound work (LoRA branches, dropout, norms), and QLoRA
dequantises every weight before each matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.arch import ModelSpec

# Achievable model-FLOPs utilisation of a 7B-class model on one GPU, per method.
BASE_MFU = {"full": 0.45, "lora": 0.38, "qlora": 0.28}
# Small models have small matmuls: utilisation falls with the hidden size.
REFERENCE_HIDDEN = 4096
# Gradient all-reduce / parameter gathers that do not overlap fully with compute.
MULTI_GPU_EFFICIENCY = {"ddp": 0.92, "zero2": 0.9, "fsdp": 0.88, "zero3": 0.85}


@dataclass(frozen=True)
class SpeedEstimate:
    flops_per_token: float
    mfu: float
    tokens_per_s: float
    """Training tokens per second over all GPUs."""


def flops_per_token(
    spec: ModelSpec, method: str, seq_len: int, grad_ckpt: bool, trainer: str = "sft"
) -> float:
    """Training FLOPs for one token (forward, backward and any recomputation)."""
    matmul_params = spec.active_params - spec.norm_params
    if spec.tied_embeddings:
        matmul_params += 0  # the tied head is a matmul and already in active_params
    attention = 4 * spec.num_layers * spec.q_dim * (seq_len / 2)
    forward = 2 * matmul_params + attention
    backward = (4 * matmul_params if method == "full" else 2 * matmul_params) + 2 * attention
    total = forward + backward + (forward if grad_ckpt else 0.0)
    if trainer == "dpo" and method == "full":
        total += forward  # the frozen reference model's forward on the same tokens
    elif trainer == "dpo":
        total += forward  # reference log-probs: the same model with adapters off
    return total


def estimate_speed(
    spec: ModelSpec,
    method: str,
    seq_len: int,
    grad_ckpt: bool,
    trainer: str,
    gpu_tflops: float,
    num_gpus: int,
    strategy: str,
    micro_batch: int,
) -> SpeedEstimate:
    fpt = flops_per_token(spec, method, seq_len, grad_ckpt, trainer)
    size_factor = min(1.0, (spec.hidden_size / REFERENCE_HIDDEN) ** 0.5)
    # Very few tokens per micro-step leave the GPU idle between kernels.
    batch_factor = min(1.0, (micro_batch * seq_len / 2048) ** 0.25)
    mfu = BASE_MFU[method] * size_factor * batch_factor
    if num_gpus > 1:
        mfu *= MULTI_GPU_EFFICIENCY.get(strategy, 0.9)
    tokens_per_s = num_gpus * gpu_tflops * 1e12 * mfu / fpt
    return SpeedEstimate(flops_per_token=fpt, mfu=mfu, tokens_per_s=tokens_per_s)
