"""Time of one training step on one GPU: arithmetic, memory traffic and the host's dispatch.

A step is `grad_accum` micro-batches and one optimizer step. Each micro-batch is bounded by
whichever is slower, the GPU or the host that launches its kernels (PyTorch runs eagerly: the
host queues kernels ahead of the GPU until the GPU is the faster of the two):

- GPU, arithmetic: every pass over the weights (forward, the input-gradient half of the
  backward, the weight-gradient half when the weights train, the recomputed forward under
  gradient checkpointing, DPO's reference forward) is a roofline: the larger of its FLOPs at
  the achievable tensor rate and its weight bytes at the achievable memory bandwidth. A GEMM
  with few rows (tokens) cannot give every SM an output tile, so the tensor rate falls as
  `tokens / (tokens + GEMM_FILL_TOKENS)`.
- GPU, memory traffic that no matmul hides: the elementwise work of each layer (norms, rotary
  embedding, activation, residuals, LoRA's casts, dropout and scaling, eager attention's
  scores), bitsandbytes' NF4 dequantisation before every pass (codes read, a 16-bit copy
  written), the logits and loss, gradient writes and accumulation.
- Optimizer step, once per step: gradient clipping and the update read and write parameters,
  gradients and states, at the memory bandwidth.
- Host: the Python and dispatcher time to launch each layer's kernels, per pass.

Several GPUs lose a share to communication that does not overlap (`MULTI_GPU_EFFICIENCY`).
The GPU's dense tensor TFLOPS and memory bandwidth come from the catalogue (vendors'
datasheets); the efficiencies and host costs below are stated assumptions, checked against
published throughputs in docs/benchmarks/planner.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.arch import ModelSpec, lora_modules, lora_params, parse_targets
from planner.gpus import GpuSpec
from planner.memory import NF4_BYTES, adapter_bytes, optimizer_state_bytes
from planner.request import PlanRequest, memory_settings, tokens_per_seq

# Dense bf16 GEMMs of training shapes reach about three quarters of the datasheet peak (the
# peak assumes the boost clock, which power limits pull down under sustained tensor work).
GEMM_EFFICIENCY = 0.75
# Rows at which a GEMM reaches half its full-size rate: with 128-row output tiles, a few
# hundred tokens leave most SMs without a tile.
GEMM_FILL_TOKENS = 128
# Large elementwise kernels in eager PyTorch reach about 70 % of the peak bandwidth; the same
# for the optimizer's multi-tensor kernels and bitsandbytes' dequantisation.
MEMORY_EFFICIENCY = 0.7
# Backward of an elementwise op: reads its saved input and the incoming gradient, writes the
# input gradient (two passes' worth of traffic).
BACKWARD_TRAFFIC = 2.0
# Causal attention kernels (flash, SDPA) recompute the scores in the backward: 2.5x the
# forward's FLOPs; eager attention keeps the probabilities (2x).
ATTENTION_BACKWARD = {"flash": 2.5, "sdpa": 2.5, "eager": 2.0}
# Bytes moved per logit (tokens x vocabulary): TRL's fused head writes and reads each 16-bit
# tile forward and twice backward; a model computing its own loss writes the logits, an fp32
# copy, the fp32 log-softmax and their gradients.
LOGIT_BYTES = {"trl": 12.0, "hf": 32.0}
# Host (CPU) time to launch the kernels of one decoder layer of a transformers model in eager
# PyTorch: about 50 operations forward through Python modules, fewer and cheaper backward
# (autograd runs them in C++). Per LoRA-wrapped linear PEFT adds about 6 operations and a
# Python dispatch; a bitsandbytes 4-bit linear its own autograd function. About 8 us per
# operation on a current server CPU: an assumption, not a measurement (a GPU box's host is
# what `benchmarks/gpu_truth.py` can settle); a slower host makes small steps slower still.
HOST_LAYER_FORWARD_S = 0.45e-3
HOST_LAYER_BACKWARD_S = 0.30e-3
HOST_ADAPTER_FORWARD_S = 0.10e-3
HOST_ADAPTER_BACKWARD_S = 0.03e-3
HOST_4BIT_LINEAR_S = 0.04e-3
# Per micro-batch outside the layers (embedding, rotary tables, mask, loss and its metrics,
# collation) and per optimizer step (clipping, the update, scheduler, zero_grad, logging).
HOST_MICRO_BATCH_S = 4e-3
HOST_STEP_S = 8e-3
# Gradient all-reduce / parameter gathers that do not overlap fully with compute.
MULTI_GPU_EFFICIENCY = {"ddp": 0.92, "zero2": 0.9, "fsdp": 0.88, "zero3": 0.85}
# Reference card for plans with no GPU chosen.
REFERENCE_GPU = "H100 SXM"


@dataclass(frozen=True)
class SpeedEstimate:
    flops_per_token: float
    """Training FLOPs per token: forward, backward, recomputation, DPO's reference pass."""
    utilisation: float
    """Those FLOPs per second over the GPUs' dense tensor peak (hardware FLOPs utilisation)."""
    tokens_per_s: float
    """Training tokens per second over all GPUs."""
    step_time_s: float
    """One optimizer step: `grad_accum` micro-batches and the update."""
    breakdown_s: dict[str, float]
    """Seconds of one step per cause, on one GPU; the host line is what the GPU waits for
    the host beyond its own work."""
    bound: str
    """What limits the micro-batches: `compute`, `memory` or `host`."""


def _state_bytes(optimizer: str, param_bytes: int) -> float:
    return optimizer_state_bytes(optimizer, param_bytes) or 0.0


def optimizer_traffic_bytes(optimizer: str, param_bytes: int, grad_bytes: int) -> float:
    """Bytes read and written per trainable parameter by one optimizer step, clipping
    included (the Trainer clips at max_grad_norm 1.0 unless told otherwise: the norm reads
    every gradient, the scaling reads and writes them)."""
    name = optimizer.lower()
    state = _state_bytes(name, param_bytes)
    clip = 3.0 * grad_bytes
    if name in ("sgd", "lomo", "adalomo"):
        return clip + 2 * param_bytes + grad_bytes
    if name == "adafactor":
        return clip + 6.0 * (param_bytes + grad_bytes)
    fused = "fused" in name or any(k in name for k in ("8bit", "4bit", "bnb", "paged"))
    if fused:
        # one kernel: parameters, gradients and states read once, parameters and states written
        return clip + 2 * param_bytes + grad_bytes + 2 * state
    # torch's multi-tensor (foreach) update: weight decay, the two moment updates, a square
    # root, a division, an addition and the final addcdiv each pass over whole tensors
    return clip + 4 * param_bytes + 2 * grad_bytes + 7 * state


def _norms_per_layer(spec: ModelSpec) -> int:
    if spec.model_type in ("gemma2", "gemma3_text"):
        return 4
    return 1 if spec.model_type == "phi" else 2


def layer_traffic_bytes(spec: ModelSpec, r: PlanRequest, method: str, act: int) -> float:
    """Bytes one decoder layer's elementwise work moves for one token, forward."""
    h, q, kv, width = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.mlp_width
    # transformers' RMSNorm upcasts, squares, takes the mean, scales, downcasts and multiplies
    # by its weight; LayerNorm and Liger's RMSNorm are one fused kernel
    norm = float((4 * act + 28) * h if spec.norm_kind == "rms" and not r.liger else 2 * act * h)
    total = _norms_per_layer(spec) * norm
    # rotary embedding of q and k: two multiplies, a rotate (slices, negation, concat), an add
    total += (2 * act if r.liger else 10 * act) * (q + kv)
    total += act * (2 * q + 2 * kv)  # attention kernel reads q, k, v and writes its output
    total += 2 * act * q  # the contiguous copy before o_proj
    total += 2 * 3 * act * h  # two residual additions
    if r.attn == "eager":
        # the scores row of every head, over the whole sequence: product, scale, mask, fp32
        # softmax, downcast, read by the value product
        total += (8 * act + 16) * spec.num_heads * tokens_per_seq(r)
    if spec.mlp_gated:
        total += (3 if r.liger else 5) * act * width  # SiLU(gate) * up
    else:
        total += 2 * act * width
    if spec.num_experts:
        total += 4 * act * h * spec.experts_per_token  # tokens gathered to and from experts
    if method != "full":
        total += _adapter_traffic(spec, r, method, act)
    return total


def _adapter_traffic(spec: ModelSpec, r: PlanRequest, method: str, act: int) -> float:
    """PEFT's LoRA branch per token, forward, summed over the wrapped linears of a layer:
    the input cast to the adapter dtype, dropout (a copy and a 1-byte mask), the two small
    matmuls' input and output, the scaling and the sum with the base output (and its cast
    back when the adapters are fp32)."""
    ab = adapter_bytes(memory_settings(r, method, parse_targets(r.lora_targets)))
    per_in = (act + ab if ab != act else 0) + (2 * ab + 1 if r.lora_dropout > 0 else 0) + ab
    per_out = ab + 2 * ab + (act + ab + max(act, ab)) + (ab + act if ab > act else 0)
    wrapped = lora_modules(spec, parse_targets(r.lora_targets))
    return sum(per_in * m.in_features + per_out * m.out_features for m in wrapped)


def _weight_read_bytes(spec: ModelSpec, r: PlanRequest, method: str, tokens: int) -> float:
    """Bytes the matmuls read from their weights in one pass over the model."""
    # every weight but the input embedding (a lookup) and the norms; a tied embedding is
    # read again as the LM head
    dense = spec.total_params - spec.embedding_params - spec.norm_params - spec.expert_params
    if spec.tied_embeddings:
        dense += spec.embedding_params
    # experts a micro-batch touches: each expert is missed by a token with chance 1 - k/E
    touched = 0.0
    if spec.num_experts:
        missed = (1 - spec.experts_per_token / spec.num_experts) ** tokens
        touched = spec.expert_params * (1 - missed)
    weights = dense + touched
    if method == "qlora":
        return 2.0 * weights  # the matmul reads the dequantised 16-bit copy
    if r.precision == "fp32":
        return 4.0 * weights
    return 2.0 * weights


def _matmul_params(spec: ModelSpec) -> tuple[float, float]:
    """(matmul weights one token passes in the layers, those of the LM head)."""
    head = float(spec.vocab_size * spec.hidden_size)
    return float(spec.active_params - spec.norm_params) - head, head


def flops_per_token(spec: ModelSpec, r: PlanRequest, method: str) -> dict[str, float]:
    """FLOPs per token of each pass (forward, backward, recompute, reference)."""
    seq = tokens_per_seq(r)
    layers, head = _matmul_params(spec)
    attention = 4 * spec.num_layers * spec.q_dim * (seq / 2)  # causal: half the keys
    forward = 2 * (layers + head) + attention
    backward = 2 * (layers + head) + ATTENTION_BACKWARD[r.attn] * attention
    if method == "full":
        backward += 2 * (layers + head)  # weight gradients
    else:
        wrapped = lora_modules(spec, parse_targets(r.lora_targets))
        adapter = 2 * r.lora_r * sum(m.in_features + m.out_features for m in wrapped)
        forward += adapter * spec.num_layers
        backward += 2 * adapter * spec.num_layers
    passes = {"forward": forward, "backward": backward}
    if r.grad_ckpt:
        passes["recompute"] = forward - 2 * head
    if r.trainer == "dpo" and not r.precompute_ref:
        passes["reference"] = forward  # the frozen reference (or adapters off) on the same pair
    return passes


@dataclass(frozen=True)
class Workload:
    """What one GPU does per micro-batch and per optimizer step, whatever the card."""

    tokens: int
    """Tokens of one micro-batch on one GPU."""
    pass_flops: tuple[float, ...]
    """FLOPs of each pass over the weights, for the whole micro-batch."""
    pass_weight_bytes: tuple[float, ...]
    """Bytes each of those passes reads from (or writes to) weight-sized tensors."""
    traffic_bytes: float
    """Memory traffic no matmul hides, per micro-batch (dequantisation included)."""
    host_s: float
    """Host time to launch one micro-batch."""
    optimizer_bytes: float
    """Traffic of one optimizer step on one GPU."""
    fp32: bool
    grad_accum: int
    num_gpus: int
    strategy: str


def workload(spec: ModelSpec, r: PlanRequest, method: str) -> Workload:
    """The card-independent part of the estimate, for this request and method."""
    act = 4 if r.precision == "fp32" else 2
    seqs = r.micro_batch * (2 if r.trainer == "dpo" else 1)  # chosen and rejected together
    tokens = seqs * tokens_per_seq(r)
    several = r.num_gpus > 1
    # gradients and optimizer states are sharded by FSDP and ZeRO-2/3, the weights by FSDP
    # and ZeRO-3 (gathered for every pass all the same)
    state_shard = r.num_gpus if several and r.strategy in ("fsdp", "zero2", "zero3") else 1
    targets = parse_targets(r.lora_targets)
    settings = memory_settings(r, method, targets)

    # matmuls, pass by pass
    passes = flops_per_token(spec, r, method)
    weight_bytes = _weight_read_bytes(spec, r, method, tokens)
    mixed = r.precision in ("bf16-mixed", "fp16-mixed")
    pass_bytes = []
    for name in passes:
        read = weight_bytes
        if name == "backward" and method == "full":
            read *= 2  # the weight-gradient GEMMs write a gradient the size of the weights
        if mixed and name != "backward":
            read += 6.0 * spec.total_params  # autocast's fp32 -> 16-bit copy, read and written
        pass_bytes.append(read)

    # traffic that no matmul hides
    layer = layer_traffic_bytes(spec, r, method, act)
    elementwise_passes = 1 + BACKWARD_TRAFFIC + (1 if r.grad_ckpt else 0)
    if "reference" in passes:
        elementwise_passes += 1
    traffic = layer * spec.num_layers * tokens * elementwise_passes
    traffic += tokens * spec.vocab_size * LOGIT_BYTES["trl" if r.liger else r.stack]
    if method == "qlora":
        quantized = spec.quantizable_params - spec.expert_params  # fused experts stay 16-bit
        # every pass dequantises the weights it multiplies: codes read, a 16-bit copy written
        traffic += quantized * (NF4_BYTES[r.quant] + 2.0) * len(passes)
    if method == "full":
        trainable = float(spec.total_params)
        param_bytes = grad_bytes = 2 if r.precision in ("bf16", "fp16") else 4
    else:
        trainable = float(lora_params(spec, targets, r.lora_r))
        param_bytes = grad_bytes = adapter_bytes(settings)
    # later micro-batches read the accumulated gradient and the new one, and write the sum
    traffic += trainable * grad_bytes * 3 * (r.grad_accum - 1) / r.grad_accum / state_shard

    # host: launching each pass of each layer's kernels
    wrapped = len(lora_modules(spec, targets)) if method != "full" else 0
    four_bit = len(spec.linears) * HOST_4BIT_LINEAR_S if method == "qlora" else 0.0
    forward_host = HOST_LAYER_FORWARD_S + wrapped * HOST_ADAPTER_FORWARD_S + four_bit
    backward_host = HOST_LAYER_BACKWARD_S + wrapped * HOST_ADAPTER_BACKWARD_S + four_bit
    forwards = len(passes) - 1  # forward, recompute, reference
    host_s = spec.num_layers * (forwards * forward_host + backward_host) + HOST_MICRO_BATCH_S

    optimizer_bytes = optimizer_traffic_bytes(r.optimizer, param_bytes, grad_bytes)
    optimizer_bytes *= trainable / state_shard
    return Workload(
        tokens=tokens,
        pass_flops=tuple(f * tokens for f in passes.values()),
        pass_weight_bytes=tuple(pass_bytes),
        traffic_bytes=traffic,
        host_s=host_s,
        optimizer_bytes=optimizer_bytes,
        fp32=r.precision == "fp32",
        grad_accum=r.grad_accum,
        num_gpus=r.num_gpus,
        strategy=r.strategy,
    )


def time_on(work: Workload, gpu: GpuSpec) -> SpeedEstimate:
    """The workload timed on `work.num_gpus` x `gpu`."""
    bandwidth = gpu.bandwidth_gbps * 1e9 * MEMORY_EFFICIENCY
    # fp32 matmuls are planned at the TF32 rate (half the bf16 rate on Ampere and later)
    peak = gpu.tflops * 1e12 * (0.5 if work.fp32 else 1.0)
    rate = peak * GEMM_EFFICIENCY * work.tokens / (work.tokens + GEMM_FILL_TOKENS)
    compute_s = sum(
        max(flops / rate, read / bandwidth)
        for flops, read in zip(work.pass_flops, work.pass_weight_bytes, strict=True)
    )
    memory_s = work.traffic_bytes / bandwidth
    gpu_s = compute_s + memory_s
    micro_s = max(gpu_s, work.host_s)
    optimizer_s = max(work.optimizer_bytes / bandwidth, HOST_STEP_S)
    step_s = work.grad_accum * micro_s + optimizer_s
    breakdown = {
        "matmuls": work.grad_accum * compute_s,
        "memory traffic": work.grad_accum * memory_s,
        "waiting for the host": work.grad_accum * max(0.0, work.host_s - gpu_s),
        "optimizer step": optimizer_s,
    }
    if work.num_gpus > 1:
        step_s /= MULTI_GPU_EFFICIENCY.get(work.strategy, 0.9)
        breakdown["communication"] = step_s - sum(breakdown.values())
    tokens_per_s = work.tokens * work.grad_accum * work.num_gpus / step_s
    flops_per_token = sum(work.pass_flops) / work.tokens
    bound = "compute" if compute_s >= memory_s else "memory"
    if work.host_s > gpu_s:
        bound = "host"
    return SpeedEstimate(
        flops_per_token=flops_per_token,
        utilisation=flops_per_token * tokens_per_s / (work.num_gpus * gpu.tflops * 1e12),
        tokens_per_s=tokens_per_s,
        step_time_s=step_s,
        breakdown_s=breakdown,
        bound=bound,
    )


def estimate_speed(spec: ModelSpec, r: PlanRequest, method: str, gpu: GpuSpec) -> SpeedEstimate:
    """Tokens per second of `method` with this request's settings on `r.num_gpus` x `gpu`."""
    return time_on(workload(spec, r, method), gpu)
