"""The moments of one training step of TRL's trainer that can be its memory peak.

Bytes beyond the static memory (weights, adapters, optimizer states), from the layer account
of `planner.activations`: the forward's last layer, DPO's reference forward, the fused LM
head's forward and backward, the first layer of the backward pass (a checkpointed layer's
recomputation and backward) and its end, when every gradient is there.

TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`) scores the rows that have a
next-token label in tiles of 4096 rows x 32768 vocabulary entries with Triton kernels that
write in place: it keeps a compact copy of those rows' hidden states, and its backward
accumulates the hidden states' gradient (and, when the head trains, the weight's) in fp32
before casting them back.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.activations import FP32, Layer, Settings
from planner.arch import ModelSpec

HEAD_TILE_TOKENS = 4096
HEAD_TILE_VOCAB = 32768


@dataclass(frozen=True)
class Step:
    """Bytes beyond the static memory at each moment, and what makes up the worst."""

    moments: dict[str, float]
    activations: float
    """Activations at the worst moment (kept ones and the layer at work)."""
    loss: float
    """The LM head's and loss's buffers at the worst moment."""


def step_moments(
    spec: ModelSpec,
    s: Settings,
    layer: Layer,
    micro_batch: int,
    dpo: bool,
    grad_ckpt: bool,
    head_trains: bool,
    grads_bytes: float,
    first_grads_bytes: float,
) -> Step:
    """The moments of one step. `grads_bytes`: all parameter gradients; `first_grads_bytes`:
    those there when the backward pass reaches its first layer (the LM head's and that
    layer's)."""
    a = s.act_bytes
    h, vocab, layers = spec.hidden_size, spec.vocab_size, spec.num_layers
    seqs = micro_batch * (2 if dpo else 1)  # DPO: chosen and rejected in one pass
    tokens = seqs * s.seq_len
    rows = tokens - seqs  # positions with a next-token label
    tile = min(rows, HEAD_TILE_TOKENS) * min(vocab, HEAD_TILE_VOCAB) * a
    stream = FP32 if s.fp32_stream else a
    # the final norm (kept like a layer's) and what the fused head keeps: its compact copy
    # of the hidden states, the targets, log-normaliser and entropy per row
    final_norm = (FP32 + (a if head_trains else 0)) * h * tokens
    head_saved = (a * h + 16) * rows
    per_sequence_masks = layer.mask_bytes_per_sequence * seqs * layers
    # the masks the model makes once per forward and hands every layer: a boolean one per
    # sequence for SDPA's sliding window, bf16 additive ones (causal, sliding) for eager
    masks = 0.0
    if layer.mask_bytes_per_sequence:
        masks = seqs * s.seq_len * s.seq_len
    if s.attn == "eager":
        kinds = 2 if 0 < spec.sliding_layers < layers else 1
        masks = kinds * a * seqs * s.seq_len * s.seq_len

    if grad_ckpt:
        # each layer's input (the embedding output for the first) and the masks, kept for
        # the recomputation; a checkpointed forward keeps nothing of the layer itself
        kept_layers = layers * stream * h * tokens + masks
        layer_bytes_kept = 0.0
        forward_last = kept_layers + layer.nograd_extra * tokens
    else:
        kept_layers = layers * layer.saved * tokens + per_sequence_masks
        layer_bytes_kept = layers * layer.per_layer_bytes
        forward_last = (layers - 1) * layer.saved * tokens + layer.forward_peak * tokens
        forward_last += per_sequence_masks + layer_bytes_kept + masks
    kept = kept_layers + layer_bytes_kept + final_norm
    moments: dict[str, float] = {"forward": forward_last + layer.per_layer_peak_bytes}
    head_forward = a * h * tokens + head_saved + tile + 36 * rows
    moments["head forward"] = kept + head_forward
    if dpo:
        # the reference pass, after the policy's and under no_grad: one layer at a time
        reference = max(layer.nograd_extra * tokens + masks, head_forward)
        moments["reference forward"] = kept + head_saved + reference
    head_backward = FP32 * h * rows + a * h * rows + tile + 8 * rows
    if head_trains:
        head_backward += (FP32 + a) * vocab * h  # the fp32 weight gradient and its bf16 cast
    moments["head backward"] = kept + head_saved + head_backward
    in_flight = 2 * a * h * tokens  # the gradients of the layer's output and of its residual
    if grad_ckpt:
        # the layer recomputes its forward, then its backward runs over what it kept
        working = (
            max(layer.forward_peak, layer.backward_peak) * tokens
            + layer.per_layer_bytes
            + layer.per_layer_peak_bytes
            + layer.mask_bytes_per_sequence * seqs
        )
        first = kept_layers + working
        last = stream * h * tokens + masks + working  # the other layers' inputs are freed
    else:
        working = (layer.backward_peak - layer.saved) * tokens + layer.per_layer_peak_bytes
        first = kept_layers + layer_bytes_kept + working
        last = layer.saved * tokens + layer.per_layer_bytes + working
    moments["backward"] = first + in_flight + first_grads_bytes
    moments["end of backward"] = last + in_flight + grads_bytes
    if head_trains and spec.tied_embeddings:
        # the tied weight's two gradients (LM head, embedding) before they are summed
        moments["end of backward"] += 2 * a * vocab * h
    worst = max(moments, key=lambda k: moments[k])
    loss = moments[worst] - kept if worst.startswith("head") else 0.0
    return Step(moments=moments, activations=moments[worst] - loss, loss=loss)
