"""Peak GPU memory of one training process, component by component.

Units are bytes; the report turns them into GiB. The allocated peak is the largest of the
step's moments; the CUDA context and the caching allocator's slack are separate terms.

`framework` selects the training stack:
- `trl` (the default, what `tunedeck run` trains with): TRL >= 1.x over transformers and PEFT,
  bf16 weights under CUDA autocast. What each decoder layer keeps and holds is accounted
  tensor by tensor in `planner.activations` (norms, LoRA's autocast copies and dropout masks,
  flash / memory-efficient / eager attention, the MLP, MoE experts), and the step's moments
  in `planner.step` (the last layer's forward, DPO's reference pass, TRL's fused LM head,
  the backward pass's first layer and its end, the optimizer step). Checked against
  `benchmarks/planner_truth.py`, which counts the same stack on the meta device.
- `hf`: a transformers model computing its own loss: bf16 logits, an fp32 copy and fp32
  log-softmax output (the usual HF Trainer / plain training loop).
- `litgpt`: LitGPT: logits kept in bf16 chunks, bf16 cross entropy; LoRA in the model dtype.
The `hf` and `litgpt` stacks keep the earlier per-layer model (`_layer_activation_bytes`),
checked against published measurements (`benchmarks/planner_accuracy.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.activations import Settings, layer_account
from planner.arch import Linear, ModelSpec, lora_modules
from planner.step import step_moments

GIB = 1024**3

# What an empty CUDA process holds outside PyTorch's allocator (context, kernels of
# PyTorch, cuBLAS and NCCL loaded lazily): nvidia-smi shows about 0.5-0.9 GiB.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
# bitsandbytes' 4-bit layout: NF4 codes (0.5 byte) plus one absmax per block of 64
# weights: fp32 without double quantisation, 8-bit (+ one fp32 per 256 blocks) with it.
NF4_BYTES = {"nf4": 0.5 + 4 / 64, "nf4-dq": 0.5 + 1 / 64 + 4 / (64 * 256)}
# The caching allocator keeps freed blocks for reuse; at the peak, part of the reserved
# pool is blocks of the wrong size. Measured reserved/allocated ratios of training runs
# sit around 1.03-1.10 of the memory that changes during a step.
FRAGMENTATION = 0.06
FUSED_TILE_TOKENS = 4096
FUSED_TILE_VOCAB = 32768

OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_hf",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adamw_bnb_32bit",
    "adafactor",
    "sgd",
)
PRECISIONS = ("bf16", "fp16", "bf16-mixed", "fp16-mixed", "fp32")
FRAMEWORKS = ("trl", "hf", "litgpt")


@dataclass(frozen=True)
class MemorySettings:
    """The settings that decide memory (a subset of the plan request)."""

    method: str
    trainer: str = "sft"
    num_gpus: int = 1
    strategy: str = "ddp"
    seq_len: int = 2048
    micro_batch: int = 1
    grad_accum: int = 1
    grad_ckpt: bool = True
    attn: str = "sdpa"
    precision: str = "bf16"
    optimizer: str = "adamw_torch_fused"
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = 0.05
    quant: str = "nf4-dq"
    liger: bool = False
    framework: str = "trl"
    precompute_ref: bool = False


@dataclass(frozen=True)
class MemoryEstimate:
    breakdown_bytes: dict[str, float]
    """Component -> bytes; sums to `device_peak_bytes`."""
    torch_peak_bytes: float
    """What torch.cuda.max_memory_reserved would report."""
    allocated_peak_bytes: float
    """What torch.cuda.max_memory_allocated would report."""
    device_peak_bytes: float
    """torch_peak plus the CUDA context and memory outside PyTorch's pool (nvidia-smi)."""
    trainable_params: int


def _weight_bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


def optimizer_state_bytes(optimizer: str, param_bytes: int) -> float | None:
    """Optimizer state per trainable parameter, in the dtype the optimizer keeps it;
    None for an optimizer the planner does not know."""
    name = optimizer.lower()
    eight_bit = 1.0 + 4 / 256  # uint8 value + one fp32 absmax per block of 256
    if name in (
        "adamw_torch",
        "adamw_torch_fused",
        "adamw_hf",
        "adamw_torch_xla",
        "adamw_torch_npu_fused",
        "adamw_anyprecision",
        "stable_adamw",
        "grokadamw",
    ):
        return 2.0 * param_bytes  # exp_avg, exp_avg_sq in the parameter's dtype
    if name in ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "adamw_torch_8bit"):
        return 2 * eight_bit
    if name == "adamw_torch_4bit":
        return 2 * (0.5 + 4 / 128)
    if name in ("paged_adamw_32bit", "adamw_bnb_32bit"):
        return 8.0  # bitsandbytes keeps 32-bit states in fp32
    if name in ("lion_32bit", "paged_lion_32bit", "rmsprop_bnb_32bit"):
        return 4.0
    if name in ("lion_8bit", "paged_lion_8bit", "rmsprop_bnb_8bit", "rmsprop_bnb"):
        return eight_bit
    if name in ("rmsprop", "adagrad"):
        return float(param_bytes)
    if name in ("ademamix", "paged_ademamix_32bit"):
        return 3.0 * (4 if name.startswith("paged") else param_bytes)
    if name in ("ademamix_8bit", "paged_ademamix_8bit"):
        return 3 * eight_bit
    if name.startswith("schedule_free"):
        return 2.0 * param_bytes
    if name in ("sgd", "lomo", "adalomo"):
        return 0.0  # plain SGD (no momentum) and the fused-update optimizers keep no state
    if name.startswith(("galore", "apollo")):
        return 0.25 * param_bytes  # low-rank projected states: a fraction of one copy
    if name == "adafactor":
        return 0.0  # handled from the shapes
    return None


def _optimizer_state_bytes(optimizer: str, param_bytes: int) -> float:
    value = optimizer_state_bytes(optimizer, param_bytes)
    return 0.0 if value is None else value


def attention_kernel(spec: ModelSpec, attn: str) -> str:
    """The attention a run gets: SDPA (the default) where transformers supports it for the
    model, eager attention where it does not."""
    if attn == "sdpa" and not spec.supports_sdpa:
        return "eager"
    return attn


def qlora_unquantized_bytes() -> int:
    """Bytes per parameter bitsandbytes leaves unquantised under QLoRA (embeddings, LM head,
    norms, biases, fused MoE experts): the runner keeps them in the 16-bit compute dtype
    (`runner.train_build.prepare_quantized` skips PEFT's fp32 upcast)."""
    return 2


def adapter_bytes(s: MemorySettings) -> int:
    """Bytes per LoRA parameter: PEFT upcasts adapters to fp32 (autocast_adapter_dtype);
    TRL casts them back to bf16 over a 4-bit base; LitGPT keeps them in the model dtype."""
    if s.framework == "litgpt":
        return _weight_bytes(s.precision) if s.method == "lora" else 2
    if s.method == "qlora" and s.framework == "trl":
        return 2
    return 4


def _adafactor_state_elems(spec: ModelSpec, trainable: tuple[Linear, ...] | None) -> float:
    """Adafactor keeps a row and a column vector per matrix (no first moment by default)."""
    if trainable is not None:  # adapters: A (r x in) and B (out x r)
        return 0.0
    per_layer = sum(m.in_features + m.out_features for m in spec.linears)
    return per_layer * spec.num_layers + 2 * (spec.vocab_size + spec.hidden_size)


def _layer_activation_bytes(spec: ModelSpec, s: MemorySettings, act: int, tokens: int) -> float:
    """Bytes one decoder layer saves for its backward pass, for `tokens` tokens."""
    h, kv, q = spec.hidden_size, spec.kv_dim, spec.q_dim
    full = s.method == "full"
    wrapped: set[str] = set()
    if not full:
        wrapped = {m.name for m in lora_modules(spec, s.lora_targets)}

    ab = adapter_bytes(s) if not full else act

    def input_kept(roles: tuple[str, ...]) -> float:
        """Bytes per element of one block input kept by the linears that read it: a
        trainable linear keeps its input for the weight gradient, a frozen one nothing
        (its input gradient needs only the weight). A LoRA branch casts its input to the
        adapter dtype first (a copy per wrapped module when the adapters are fp32 over a
        bf16 base, as PEFT makes them), and with dropout keeps its own dropped-out copy
        plus a 1-byte mask. Checked against the tensors autograd saves (tests)."""
        readers = {m.name: m for m in spec.linears if set(m.roles) & set(roles)}
        if full:
            return float(act) if readers else 0.0
        hit = [name for name in readers if name in wrapped]
        if not hit:
            return 0.0
        if s.lora_dropout > 0:
            return len(hit) * (ab + 1.0)
        return float(ab) * (len(hit) if ab != act else 1)

    norms = 2 if spec.model_type not in ("gemma2", "gemma3_text") else 4
    if spec.norm_kind == "rms" and not s.liger and s.framework != "litgpt":
        # RMSNorm upcasts to fp32 and keeps it; the weight multiply keeps the bf16 normed
        # tensor only when the weight trains.
        norm_bytes = 4 * h + (act * h if full else 0)
    elif spec.norm_kind == "rms" and s.framework == "litgpt":
        norm_bytes = 8 * h  # LitGPT's RMSNorm keeps the fp32 input and fp32 normed tensor
    else:
        norm_bytes = act * h  # LayerNorm / fused RMSNorm keep the input (+ tiny statistics)
    total: float = norms * norm_bytes
    if spec.model_type == "phi":
        norms = 1
        total = norm_bytes

    # Attention: inputs of the projections, q/k/v for the kernel, its output.
    total += h * input_kept(("q", "k", "v"))
    expand_kv = spec.num_kv_heads < spec.num_heads and (
        s.attn == "eager" or (s.attn == "sdpa" and s.micro_batch > 1 and s.framework != "litgpt")
    )
    kv_saved = 2 * (q if expand_kv else kv)
    total += act * (q + kv_saved)  # rotated q, k and v kept by the attention kernel
    total += act * q  # the attention output, kept by the kernel
    total += q * input_kept(("o",))  # the contiguous copy o_proj keeps
    if s.attn == "eager":
        # softmax kept in fp32 and its bf16 copy for the value product, per head and key
        total += 6 * spec.num_heads * s.seq_len

    # MLP.
    width = spec.mlp_width
    up_in = input_kept(("gate", "up")) if spec.mlp_gated else input_kept(("up",))
    total += h * up_in
    if spec.mlp_gated:
        # gate and up outputs; SiLU(gate) kept for the product (Liger recomputes it)
        total += act * width * (2 if s.liger else 3)
    else:
        total += act * width * (3 if spec.model_type == "phi" else 1)  # tanh-GELU in parts
    total += width * input_kept(("down",))
    if spec.num_experts:
        total += act * h * spec.experts_per_token  # tokens gathered per expert
    return total * tokens


def estimate_memory(spec: ModelSpec, s: MemorySettings) -> MemoryEstimate:
    """Peak memory of one GPU's training process for these settings."""
    s = replace(s, attn=attention_kernel(spec, s.attn))
    p_total = spec.total_params
    shard = s.num_gpus if s.strategy in ("fsdp", "zero3") else 1
    opt_shard = s.num_gpus if s.strategy in ("fsdp", "zero3", "zero2") else 1
    act = 4 if s.precision == "fp32" else 2
    dpo = s.trainer == "dpo"
    seqs = s.micro_batch * (2 if dpo else 1)  # chosen and rejected in one pass
    tokens = seqs * s.seq_len
    h = spec.hidden_size

    parts: dict[str, float] = {}
    if s.method == "full":
        w = _weight_bytes(s.precision)
        parts["weights"] = p_total * w / shard
        trainable = p_total
        grad_bytes = trainable * w / opt_shard
        state = _optimizer_state_bytes(s.optimizer, w)
        if s.optimizer == "adafactor":
            states = _adafactor_state_elems(spec, None) * w / opt_shard
        else:
            states = trainable * state / opt_shard
        if s.precision in ("bf16-mixed", "fp16-mixed"):
            # autocast keeps a 16-bit copy of every weight it casts during the step
            parts["autocast copies"] = p_total * 2 / shard
        if dpo and not s.precompute_ref:
            parts["reference model"] = p_total * 2 / shard
    else:
        wrapped = lora_modules(spec, s.lora_targets)
        trainable = sum(s.lora_r * (m.in_features + m.out_features) for m in wrapped)
        if "all-linear" in s.lora_targets:
            trainable += s.lora_r * spec.all_linear_extra_per_rank
        trainable *= spec.num_layers
        base_w = _weight_bytes(s.precision)
        adapter_w = adapter_bytes(s)
        if s.method == "qlora":
            quantized = spec.quantizable_params
            if s.framework in ("trl", "hf"):
                # transformers 5 keeps MoE experts as fused 3-D weights, which bitsandbytes'
                # 4-bit conversion (nn.Linear only) skips: they stay 16-bit
                # (bitsandbytes#1849)
                quantized -= spec.expert_params
            unquantized = (p_total - quantized) * qlora_unquantized_bytes()
            parts["weights"] = (quantized * NF4_BYTES[s.quant] + unquantized) / shard
        else:
            parts["weights"] = p_total * base_w / shard
        parts["adapters"] = trainable * adapter_w
        grad_bytes = trainable * adapter_w
        if s.optimizer == "adafactor":
            states = trainable * adapter_w * 0.05
        else:
            states = trainable * _optimizer_state_bytes(s.optimizer, adapter_w)

    paged = s.optimizer.startswith("paged_")
    if s.framework == "trl":
        return _trl_estimate(spec, s, parts, trainable, grad_bytes, states, shard, opt_shard)

    # Activations kept for the backward pass.
    layer_full = _layer_activation_bytes(spec, s, act, tokens)
    if s.grad_ckpt:
        kept = spec.num_layers * act * h * tokens  # each layer's input only
        # one layer recomputed at a time, plus its gradient temporaries
        activations = kept + 2 * layer_full
    else:
        activations = spec.num_layers * layer_full + layer_full  # + one layer's grad temps
    activations += act * h * tokens * 2  # embedding output and final norm output
    parts["activations"] = activations

    # Logits and loss.
    head_trainable = s.method == "full"
    if s.framework == "trl" or s.liger:
        tile = min(tokens, FUSED_TILE_TOKENS) * min(spec.vocab_size, FUSED_TILE_VOCAB) * act
        loss: float = tile + tokens * h * (act + 4)  # hidden copy + fp32 hidden gradient
        if head_trainable:
            loss += spec.vocab_size * h * 4 / shard  # fp32 head gradient before the cast
    elif s.framework == "litgpt":
        loss = tokens * spec.vocab_size * 8  # bf16 logits, bf16 log-softmax, two bf16 grads
    else:
        loss = tokens * spec.vocab_size * 12  # fp32 log-softmax + two fp32 gradients
    parts["logits/loss"] = loss

    # Peak moments: start of backward vs the optimizer step.
    static = parts["weights"] + parts.get("adapters", 0.0) + parts.get("reference model", 0.0)
    if not paged:
        static += states
    ddp_buckets = 0.0
    if s.num_gpus > 1 and s.strategy == "ddp":
        # DDP's reducer keeps its own flat buckets of every gradient for the all-reduce
        # (gradient_as_bucket_view is off by default in accelerate)
        ddp_buckets = grad_bytes
        static += ddp_buckets
    grads_in_backward = grad_bytes if s.grad_accum > 1 else 0.0
    backward_peak = (
        static + parts.get("autocast copies", 0.0) + grads_in_backward + activations + loss
    )
    end_of_backward = static + grad_bytes + parts.get("autocast copies", 0.0) + layer_full
    opt_temp = 0.0
    if s.optimizer in ("adamw_torch", "adamw_hf") and not paged:
        # the foreach step builds one temporary the size of the second moments
        opt_temp = (trainable / opt_shard) * (
            adapter_bytes(s) if s.method != "full" else _weight_bytes(s.precision)
        )
    step_peak = static + grad_bytes + opt_temp
    if shard > 1:
        # FSDP / ZeRO-3 gather a layer's full weights, with the next one prefetched (and,
        # when they train, its full gradients before the reduce-scatter)
        layer_bytes = parts["weights"] * shard / spec.num_layers
        backward_peak += 2 * layer_bytes * (2 if s.method == "full" else 1)
    allocated = max(backward_peak, end_of_backward, step_peak)
    # Fragmentation comes from the memory that is freed and re-allocated every step.
    churn = activations + loss + (grad_bytes if s.grad_accum == 1 else 0.0) + opt_temp
    allocator = FRAGMENTATION * churn
    torch_peak = allocated + allocator
    paged_bytes = states if paged else 0.0
    device_peak = torch_peak + CUDA_CONTEXT_BYTES + paged_bytes

    breakdown = {
        "weights": parts["weights"],
        "reference model": parts.get("reference model", 0.0),
        "adapters": parts.get("adapters", 0.0),
        "gradients": grad_bytes,
        "optimizer": states,
        "autocast copies": parts.get("autocast copies", 0.0),
        "activations": activations,
        "logits/loss": loss,
        "optimizer step temp": opt_temp,
        "DDP buckets": ddp_buckets,
        "allocator": allocator,
        "CUDA context": float(CUDA_CONTEXT_BYTES),
    }
    return _estimate(breakdown, torch_peak, allocated, device_peak, trainable)


# ---------------------------------------------------------------------- TRL (the default)

EIGHT_BIT = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit")
# bitsandbytes keeps 32-bit states for tensors under this many elements, and pages (CUDA
# managed memory) only states of tensors of at least the other.
BNB_MIN_8BIT_SIZE = 4096
BNB_MIN_PAGED_SIZE = 100_000


def _trainable_tensors(spec: ModelSpec, s: MemorySettings) -> list[tuple[int, bool]]:
    """(elements, is the input embedding) of every trainable tensor."""
    if s.method == "full":
        per_layer = [m.in_features * m.out_features for m in spec.linears]
        per_layer += [m.out_features for m in spec.linears if m.bias]
        per_layer += [spec.hidden_size] * max(1, spec.norm_params_per_layer // spec.hidden_size)
        if spec.num_experts:
            per_layer += [spec.expert_params_per_layer // 3 * 2, spec.expert_params_per_layer // 3]
            per_layer.append(spec.router_params_per_layer)
        out = [(n, False) for n in per_layer] * spec.num_layers
        out.append((spec.embedding_params, True))
        if spec.lm_head_params:
            out.append((spec.lm_head_params, False))
        out.append((spec.final_norm_params, False))
        return out
    per_layer = []
    for m in lora_modules(spec, s.lora_targets):
        per_layer += [s.lora_r * m.in_features, s.lora_r * m.out_features]
    if "all-linear" in s.lora_targets and spec.all_linear_extra_per_rank:
        per_layer.append(s.lora_r * spec.all_linear_extra_per_rank)
    return [(n, False) for n in per_layer] * spec.num_layers


def _eight_bit_states(spec: ModelSpec, s: MemorySettings) -> tuple[float, float]:
    """bitsandbytes' 8-bit AdamW, as the HF Trainer sets it up: one byte per state element plus
    an fp32 absmax per block of 256, fp32 states for small tensors and for the input embedding
    (the Trainer registers a 32-bit override for `nn.Embedding`). Returns (in PyTorch's pool,
    paged out of it)."""
    in_pool = paged_out = 0.0
    paged = s.optimizer.startswith("paged_")
    for elements, embedding in _trainable_tensors(spec, s):
        if embedding or elements < BNB_MIN_8BIT_SIZE:
            size = 8.0 * elements
        else:
            size = 2 * (1.0 + 4 / 256) * elements
        if paged and elements >= BNB_MIN_PAGED_SIZE:
            paged_out += size
        else:
            in_pool += size
    return in_pool, paged_out


def _trl_estimate(
    spec: ModelSpec,
    s: MemorySettings,
    parts: dict[str, float],
    trainable: float,
    grad_bytes: float,
    states: float,
    shard: int,
    opt_shard: int,
) -> MemoryEstimate:
    """One process of TRL's trainer, moment by moment (`planner.activations`, `planner.step`).
    Over several GPUs: DDP keeps its gradient buckets; ZeRO-2 shards gradients and states,
    FSDP and ZeRO-3 the weights too and gather two layers' at a time."""
    act = 4 if s.precision == "fp32" else 2
    paged_states = 0.0
    if s.optimizer in EIGHT_BIT:
        states, paged_states = _eight_bit_states(spec, s)
        if s.method == "full":
            states, paged_states = states / opt_shard, paged_states / opt_shard
    elif s.optimizer.startswith("paged_"):
        paged_states, states = states, 0.0
    settings = Settings(
        method=s.method,
        lora_r=s.lora_r,
        lora_targets=s.lora_targets,
        # TRL's DPOTrainer turns every dropout off (`disable_dropout`, on by default)
        lora_dropout=0.0 if s.trainer == "dpo" else s.lora_dropout,
        seq_len=s.seq_len,
        attn=s.attn,
        act_bytes=act,
        autocast=s.precision != "fp32",
        liger=s.liger,
        fp32_stream=s.method == "qlora" and spec.norm_style == "layer" and s.precision != "fp32",
    )
    layer = layer_account(spec, settings)
    layer_grad = grad_bytes / spec.num_layers
    head_grad = 0.0
    if s.method == "full":
        layer_grad = (
            grad_bytes - spec.embedding_params * _weight_bytes(s.precision)
        ) / spec.num_layers
        head_grad = (spec.lm_head_params or spec.embedding_params) * _weight_bytes(s.precision)
    # with gradient accumulation every gradient is there from the first micro-batch on
    accumulating = s.grad_accum > 1
    step = step_moments(
        spec,
        settings,
        layer,
        s.micro_batch,
        s.trainer == "dpo",
        s.grad_ckpt,
        s.method == "full",
        0.0 if accumulating else grad_bytes,
        0.0 if accumulating else layer_grad + head_grad,
    )
    static = parts["weights"] + parts.get("adapters", 0.0) + parts.get("reference model", 0.0)
    static += states + parts.get("autocast copies", 0.0)
    ddp_buckets = 0.0
    if s.num_gpus > 1 and s.strategy == "ddp":
        # DDP's reducer keeps flat buckets of every gradient for the all-reduce
        ddp_buckets = grad_bytes
        static += ddp_buckets
    gathered = 0.0
    if shard > 1:
        # a layer's full weights gathered, the next one prefetched (and, when they train,
        # their full gradients before the reduce-scatter)
        gathered = 2 * parts["weights"] * shard / spec.num_layers * (2 if s.method == "full" else 1)
    accumulated = grad_bytes if accumulating else 0.0
    opt_temp = 0.0
    if s.optimizer in ("adamw_torch", "adamw_hf"):
        # the foreach step builds one temporary the size of the second moments
        opt_temp = trainable * (
            adapter_bytes(s) if s.method != "full" else _weight_bytes(s.precision)
        )
    moments = {k: static + accumulated + gathered + v for k, v in step.moments.items()}
    moments["optimizer step"] = static + grad_bytes + opt_temp
    allocated = max(moments.values())
    churn = step.activations + step.loss + (grad_bytes if s.grad_accum == 1 else 0.0) + opt_temp
    allocator = FRAGMENTATION * churn
    torch_peak = allocated + allocator
    device_peak = torch_peak + CUDA_CONTEXT_BYTES + paged_states
    breakdown = {
        "weights": parts["weights"],
        "reference model": parts.get("reference model", 0.0),
        "adapters": parts.get("adapters", 0.0),
        "gradients": grad_bytes,
        "optimizer": states + paged_states,
        "autocast copies": parts.get("autocast copies", 0.0),
        "activations": step.activations,
        "logits/loss": step.loss,
        "optimizer step temp": opt_temp,
        "DDP buckets": ddp_buckets,
        "allocator": allocator,
        "CUDA context": float(CUDA_CONTEXT_BYTES),
    }
    return _estimate(breakdown, torch_peak, allocated, device_peak, trainable)


def _estimate(
    breakdown: dict[str, float],
    torch_peak: float,
    allocated: float,
    device_peak: float,
    trainable: float,
) -> MemoryEstimate:
    """The estimate from every component at its own size. What is not alive at the peak moment
    (gradients freed before the next forward, the optimizer's temporaries during the backward
    pass, activations at the optimizer step) comes off in one entry, so the parts add up to the
    device peak."""
    overlap = device_peak - sum(breakdown.values())
    if abs(overlap) > 1:
        breakdown["not alive at peak"] = overlap
    return MemoryEstimate(
        breakdown_bytes=breakdown,
        torch_peak_bytes=torch_peak,
        allocated_peak_bytes=allocated,
        device_peak_bytes=device_peak,
        trainable_params=int(trainable),
    )
