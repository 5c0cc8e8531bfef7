"""What one decoder layer keeps for its backward pass, and the most it holds at once, when it
trains the way tunedeck runs it: a transformers model under TRL, bf16 weights under CUDA
autocast, PEFT's LoRA (fp32 adapters, or bf16 ones over a 4-bit base, as TRL casts them),
SDPA's flash kernel (its memory-efficient kernel where a mask is needed) or eager attention.

Everything is bytes per token of the micro-batch, walked through the layer's forward in the
order its tensors are made: `keep` what autograd saves for the backward pass (and holds until
then), `moment` the extra tensors alive at the worst point of a step (an input, its cast
copies, an output not yet consumed). Per-layer amounts that do not scale with tokens (the
bf16 copies autocast caches of fp32 adapters, the fold of an expert adapter into its weights,
an attention mask per sequence) are kept apart. The rules, checked tensor by tensor against
the real stack on the meta device (`benchmarks/planner_truth.py`):

- A frozen linear keeps nothing of its input (its weight gradient is not needed); a trained
  one keeps its input, once for all linears that read it (bf16 inputs), or one cast copy each
  when autocast casts an fp32 input (a LayerNorm's output) for every reader.
- A LoRA adapter (fp32 weights) casts its input to fp32, drops it out (a 1-byte mask kept on
  CUDA) and autocast casts it back to bf16 for the low-rank product, which keeps that copy:
  2 bytes (+1 with dropout) per element of input, per wrapped module. Over a 4-bit base (bf16
  adapters, no autocast cast) it keeps the dropout mask and output (1 + 2 bytes) or, without
  dropout, the input itself.
- RMSNorm keeps its fp32 input copy (4 bytes); a trained weight also keeps the normalised
  tensor (bf16 for Llama's, fp32 for Gemma's `1 + w` form). LayerNorm runs in fp32 under
  autocast and keeps its fp32 input.
- Flash attention keeps q, k, v (k and v not expanded for GQA), its output and an fp32
  logsumexp per head; with a mask SDPA expands k and v and keeps the mask as an additive bf16
  bias per layer; eager attention keeps the fp32 softmax and its bf16 copy per head and key.
- A gated MLP keeps the gate's output, its activation and the up projection's output.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.arch import Linear, ModelSpec, lora_modules

FP32 = 4
MASK = 1


@dataclass(frozen=True)
class Layer:
    """One decoder layer's memory, in bytes per token unless said otherwise."""

    saved: float
    """Kept by autograd from the forward to the backward pass."""
    forward_peak: float
    """The most a layer's forward holds at once: what it has kept so far and what is alive
    at its worst moment (at least `saved`)."""
    nograd_extra: float
    """The most a forward under `torch.no_grad` holds (DPO's reference pass, a checkpointed
    layer's forward): nothing kept."""
    backward_peak: float
    """The most a layer's backward holds at once: its tensors still kept and the gradients
    of its widest ones (eager attention's scores, the MLP's intermediate)."""
    per_layer_bytes: float
    """Bytes per layer, whatever the token count: autocast's cached bf16 copies of fp32
    adapter weights, expert adapters folded into full-size weights."""
    per_layer_peak_bytes: float
    """The most a layer holds for a moment beyond that (a 4-bit weight dequantised)."""
    mask_bytes_per_sequence: float
    """Bytes per sequence each layer keeps for an attention mask (S x S), whatever the batch."""


@dataclass(frozen=True)
class Settings:
    """The settings the account depends on (a view of the memory settings)."""

    method: str
    lora_r: int
    lora_targets: tuple[str, ...]
    lora_dropout: float
    seq_len: int
    attn: str
    act_bytes: int
    autocast: bool
    liger: bool = False
    """Liger's kernels: RMSNorm keeps its input and one fp32 rstd per row, SwiGLU recomputes
    the activation (keeps gate and up only)."""
    fp32_stream: bool = False
    """QLoRA over LayerNorm models: bitsandbytes returns each 4-bit linear's output in its
    input's dtype, the LayerNorm's fp32, so the residual stream runs in fp32."""


class _Walk:
    """The forward of one layer: what is kept so far and the worst moment seen."""

    def __init__(self) -> None:
        self.saved = 0.0
        self.extra = 0.0

    def keep(self, nbytes: float) -> None:
        self.saved += nbytes

    def moment(self, live: float) -> None:
        """`live` bytes beyond what is kept so far exist at this point."""
        self.extra = max(self.extra, self.saved + live)


def _wrapped(spec: ModelSpec, s: Settings) -> set[str]:
    if s.method == "full":
        return set()
    return {m.name for m in lora_modules(spec, s.lora_targets)}


class _Readers:
    """The linears that read one tensor of width `n`, and what they keep of it."""

    def __init__(self, spec: ModelSpec, s: Settings, wrapped: set[str]) -> None:
        self.spec, self.s, self.wrapped = spec, s, wrapped

    def read(
        self, walk: _Walk, linears: list[Linear], n: int, live: float, fp32_input: bool = False
    ) -> None:
        """`live`: bytes per token alive beside this block's own tensors (the residual, the
        input itself)."""
        s, a = self.s, self.s.act_bytes
        dropout = s.lora_dropout > 0
        outputs = 0.0
        if s.method == "full" and linears:
            if fp32_input and s.autocast:
                for _ in linears:
                    walk.keep(a * n)  # autocast casts the fp32 input once per linear
            else:
                walk.keep(a * n)
        shared_kept = False
        for m in linears:
            out = a * m.out_features
            if m.name not in self.wrapped:
                cast = a * n if fp32_input and s.autocast else 0.0
                walk.moment(live + outputs + cast + out)
                outputs += out
                continue
            if s.method == "qlora":
                # bf16 adapters, no cast under autocast: dropout's output (or the input
                # itself, once for all readers) is what the low-rank product keeps; an fp32
                # input is cast by autocast for it
                if dropout:
                    walk.keep(MASK * n)
                    walk.keep(a * n)
                elif fp32_input:
                    walk.keep(a * n)
                elif not shared_kept:
                    walk.keep(a * n)
                    shared_kept = True
                walk.moment(live + outputs + out)
            else:
                fp32_copy = 0.0 if fp32_input else FP32 * n
                dropped = FP32 * n if dropout else 0.0
                if dropout:
                    walk.keep(MASK * n)
                walk.keep(2 * n)  # autocast's bf16 copy, kept by the low-rank product
                walk.moment(live + outputs + out + fp32_copy + dropped)
            walk.keep(a * s.lora_r)  # the low-rank activation, kept by lora_B
            outputs += out


def _norm(walk: _Walk, spec: ModelSpec, s: Settings, width: int, live: float) -> None:
    a = s.act_bytes
    trained = s.method == "full"
    if s.liger and spec.norm_style != "layer":
        walk.keep(a * width)
        walk.moment(live + a * width)
        return
    if spec.norm_style == "layer":
        walk.keep(FP32 * width)  # fp32 input copy (autocast runs layer_norm in fp32)
        walk.moment(live + FP32 * width)  # its fp32 output
        return
    walk.keep(FP32 * width)
    if trained:
        walk.keep((FP32 if spec.norm_style == "gemma" else a) * width)
    walk.moment(live + FP32 * width + a * width)


def layer_account(spec: ModelSpec, s: Settings) -> Layer:
    """The memory of one decoder layer of `spec` training with these settings."""
    a = s.act_bytes
    h, q, kv = spec.hidden_size, spec.q_dim, spec.kv_dim
    wrapped = _wrapped(spec, s)
    readers = _Readers(spec, s, wrapped)
    walk = _Walk()
    by_role = {role: [m for m in spec.linears if role in m.roles] for role in spec.roles()}
    residual = (FP32 if s.fp32_stream else a) * h

    # ---------------------------------------------------------------- attention
    norm_out_fp32 = spec.norm_style == "layer" and s.autocast
    norm_width_bytes = (FP32 if norm_out_fp32 else a) * h
    _norm(walk, spec, s, h, residual)
    qkv = _unique(by_role.get("q", []) + by_role.get("k", []) + by_role.get("v", []))
    mlp_in: list[Linear] = []
    if spec.parallel_block:
        mlp_in = _unique(by_role.get("gate", []) + by_role.get("up", []))
    readers.read(walk, qkv + mlp_in, h, residual + norm_width_bytes, fp32_input=norm_out_fp32)
    if spec.qk_norm:
        _norm(walk, spec, s, q, residual + a * (q + 2 * kv))
        _norm(walk, spec, s, kv, residual + a * (q + 2 * kv))
    _attention(walk, spec, s, residual)
    attention_saved = walk.saved
    readers.read(walk, by_role.get("o", []), q, residual + a * q)
    if spec.post_attention_norm:
        _norm(walk, spec, s, h, residual + a * h)

    # ---------------------------------------------------------------- MLP
    if not spec.parallel_block:
        _norm(walk, spec, s, h, residual)
        mlp_in = _unique(by_role.get("gate", []) + by_role.get("up", []))
        if not spec.num_experts:
            readers.read(walk, mlp_in, h, residual + a * h)
    if spec.num_experts:
        _experts(walk, spec, s, readers, by_role, residual)
    else:
        _mlp(walk, spec, s, readers, by_role, residual)
    if spec.post_attention_norm:
        _norm(walk, spec, s, h, residual + a * h)

    return Layer(
        saved=walk.saved,
        forward_peak=max(walk.extra, walk.saved),
        nograd_extra=_nograd_extra(spec, s),
        backward_peak=_backward_peak(spec, s, walk.saved, attention_saved),
        per_layer_bytes=_per_layer_bytes(spec, s, wrapped),
        per_layer_peak_bytes=_dequant_bytes(spec, s),
        mask_bytes_per_sequence=_mask_bytes(spec, s),
    )


def _unique(linears: list[Linear]) -> list[Linear]:
    out: list[Linear] = []
    for m in linears:
        if m not in out:
            out.append(m)
    return out


def uses_mask(spec: ModelSpec, s: Settings) -> bool:
    """Whether a layer's attention needs a materialised mask: a sliding window shorter than
    the sequence (an unpadded batch needs none otherwise)."""
    return bool(spec.sliding_window) and s.seq_len > spec.sliding_window


def _attention(walk: _Walk, spec: ModelSpec, s: Settings, residual: float) -> None:
    a = s.act_bytes
    q, kv, heads = spec.q_dim, spec.kv_dim, spec.num_heads
    # q, k after the rotary embedding (new tensors), v as projected
    live = residual + a * (q + 2 * kv)
    if s.attn == "eager":
        # repeat_kv expands k and v; per head and key: bf16 scores, softcapping's tanh (Gemma
        # 2, kept), the fp32 softmax (kept; it casts its bf16 input to fp32 first) and its
        # bf16 copy (kept, and held by the layer till its end as the attention weights)
        walk.keep(a * q * 3)
        scores = heads * s.seq_len
        if spec.attn_softcap:
            walk.keep(a * scores)
        walk.moment(live + 2 * a * scores)
        walk.keep(FP32 * scores)
        walk.moment(live + a * scores + FP32 * scores)
        walk.keep(a * scores)
        walk.keep(a * q)  # the output
        return
    if uses_mask(spec, s):
        walk.keep(a * q * 3 + a * q + FP32 * heads)  # expanded k, v; output; logsumexp
        walk.moment(live)
        return
    walk.keep(a * (q + 2 * kv) + a * q + FP32 * heads)  # flash: q, k, v, output, logsumexp
    walk.moment(live)


def _mlp(
    walk: _Walk,
    spec: ModelSpec,
    s: Settings,
    readers: _Readers,
    by_role: dict[str, list[Linear]],
    residual: float,
) -> None:
    a = s.act_bytes
    i = spec.intermediate_size
    if spec.mlp_gated:
        walk.keep((2 if s.liger else 3) * a * i)  # gate output, its activation, up output
        product = a * i
        walk.moment(residual + product + a * i)
    elif spec.mlp_act == "gelu_new" and s.autocast:
        # torch.pow is fp32 under autocast: the tanh-GELU runs in fp32 from there, keeping
        # the fp32 input copy, tanh's output, 1 + tanh and the bf16 half-input
        walk.keep(3 * FP32 * i + (FP32 if s.fp32_stream else a) * i)
        product = FP32 * i
        walk.moment(residual + a * i + 2 * FP32 * i)
    else:
        walk.keep(a * i)  # the activation's input
        product = a * i
        walk.moment(residual + 2 * a * i)
    down = by_role.get("down", [])
    fp32_product = spec.mlp_act == "gelu_new" and s.autocast and not spec.mlp_gated
    if s.method == "full":
        walk.keep(a * i)  # down's input (autocast's bf16 copy of an fp32 one)
        walk.moment(residual + product + a * spec.hidden_size)
    else:
        readers.read(walk, down, i, residual + product, fp32_input=fp32_product)


def _experts(
    walk: _Walk,
    spec: ModelSpec,
    s: Settings,
    readers: _Readers,
    by_role: dict[str, list[Linear]],
    residual: float,
) -> None:
    """transformers' grouped-GEMM experts: tokens gathered per expert (top-k copies), the
    fused gate-up output and its activation kept, the weighted expert outputs in fp32 (bf16
    times fp32 routing weights), permuted back and summed; a shared expert beside them."""
    a = s.act_bytes
    h = spec.hidden_size
    k = spec.experts_per_token
    i = spec.expert_intermediate_size
    experts_train = s.method == "full" or expert_adapters(spec, s)
    # router: fp32 softmax over the experts kept
    walk.keep(FP32 * spec.num_experts + (FP32 + 8) * k)
    gathered = a * k * h
    if experts_train:
        walk.keep(gathered)  # the gathered tokens (weight gradient of the up projection)
    walk.keep(a * k * 2 * i + a * k * i)  # fused gate-up output (gate and up are views), act
    if experts_train:
        walk.keep(a * k * i)  # the down projection's input
    walk.keep(a * k * h + FP32 * k)  # expert outputs and routing weights, kept by the weighting
    walk.moment(residual + a * h + gathered + a * k * i + 2 * FP32 * k * h + FP32 * h)
    shared = [m for m in spec.linears if m.kind == "mlp"]
    if shared:
        norm_in = residual + a * h
        up = _unique(by_role.get("gate", []) + by_role.get("up", []))
        readers.read(walk, up, h, norm_in)
        width = max(m.out_features for m in up) if up else 0
        walk.keep(3 * a * width)
        down = by_role.get("down", [])
        if s.method == "full":
            walk.keep(a * width)
        else:
            readers.read(walk, down, width, norm_in + a * width)
        gate = [m for m in spec.linears if m.name == "shared_expert_gate"]
        readers.read(walk, gate, h, norm_in)
        walk.keep(a * h + FP32)  # the shared output and its sigmoid gate, kept by the product


def expert_adapters(spec: ModelSpec, s: Settings) -> bool:
    """PEFT's `all-linear` wraps Mixtral's stacked expert weights (and its router)."""
    return (
        s.method != "full" and "all-linear" in s.lora_targets and spec.all_linear_extra_per_rank > 0
    )


def _per_layer_bytes(spec: ModelSpec, s: Settings, wrapped: set[str]) -> float:
    out = 0.0
    if s.method == "lora" and s.autocast:
        # autocast caches one bf16 copy of every fp32 adapter weight it casts
        out += (
            2
            * s.lora_r
            * sum(m.in_features + m.out_features for m in spec.linears if m.name in wrapped)
        )
    if expert_adapters(spec, s):
        # each forward folds the adapter into a full copy of every expert weight (baddbmm in
        # the weights' dtype), which the grouped GEMM keeps for the backward pass
        out += 2 * spec.expert_params_per_layer
    return out


def _dequant_bytes(spec: ModelSpec, s: Settings) -> float:
    """bitsandbytes' 4-bit GEMM for more than 1536 rows dequantises the weight to the compute
    dtype (and its absmax to fp32) for the call."""
    if s.method != "qlora":
        return 0.0
    biggest = max((m.in_features * m.out_features for m in spec.linears), default=0)
    return biggest * (2 + 2 * FP32 / 64)


def _mask_bytes(spec: ModelSpec, s: Settings) -> float:
    """SDPA turns a boolean mask into an additive one in the query's dtype, per layer call,
    and the memory-efficient kernel keeps it: S x S per sequence per sliding layer."""
    if s.attn == "eager" or not uses_mask(spec, s):
        return 0.0
    return s.act_bytes * s.seq_len * s.seq_len * spec.sliding_layers / spec.num_layers


def _nograd_extra(spec: ModelSpec, s: Settings) -> float:
    """A layer's forward with nothing kept: the widest moment, the MLP's intermediate tensors
    (gate, activation, up and their product) beside the residual and the layer input, or
    eager attention's scores (the bf16 input of the fp32 softmax and its output, then the
    fp32 softmax with the fp32 cast of its input)."""
    a = s.act_bytes
    h = spec.hidden_size
    width = spec.mlp_width if not spec.num_experts else spec.expert_intermediate_size * 2
    if spec.num_experts:
        mlp = 2 * a * h + a * spec.experts_per_token * (h + 3 * width) + FP32 * h
    else:
        mlp = 2 * a * h + 3 * a * width
    if s.attn != "eager":
        return mlp
    heads = spec.num_heads * s.seq_len
    # the softmax: its bf16 input, the fp32 cast of it and the fp32 output; the bf16
    # probabilities stay held through the MLP
    attention = 2 * a * h + 3 * a * spec.q_dim + (a + 2 * FP32) * heads
    return max(mlp + a * heads, attention)


def _backward_peak(spec: ModelSpec, s: Settings, saved: float, attention_saved: float) -> float:
    """A layer's backward at its worst: in the MLP, the gradients of gate, activation and up
    beside everything still kept (the down projection's input freed by then); in eager
    attention, the softmax backward's two fp32 gradients beside what attention and the
    layer's first half keep (the bf16 probabilities freed by then)."""
    a = s.act_bytes
    width = spec.mlp_width
    mlp = saved + 2 * a * width
    if s.attn != "eager":
        return mlp
    heads = spec.num_heads * s.seq_len
    return max(mlp, attention_saved - a * heads + 2 * FP32 * heads)
