"""The planner's activation term against the tensors autograd really saves.

A decoder layer of a tiny bf16 model runs forward in train mode while
`torch.autograd.graph.saved_tensors_hooks` records every tensor saved for the backward pass
(distinct storages, parameters excluded). The planner's per-layer estimate for the same
settings must agree: it is the term that multiplies by the layer count in every plan.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from planner.arch import load_model
from planner.memory import MemorySettings, _layer_activation_bytes

SEQ = 256


def _configs():
    import transformers as T

    common = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=512)
    return {
        "llama-sdpa": (
            T.LlamaConfig(
                intermediate_size=688, num_key_value_heads=2, attn_implementation="sdpa", **common
            ),
            "sdpa",
        ),
        "llama-eager": (
            T.LlamaConfig(
                intermediate_size=688, num_key_value_heads=2, attn_implementation="eager", **common
            ),
            "eager",
        ),
        "qwen2-bias": (
            T.Qwen2Config(
                intermediate_size=688, num_key_value_heads=2, attn_implementation="sdpa", **common
            ),
            "sdpa",
        ),
        "starcoder2-plain-mlp": (
            T.Starcoder2Config(
                intermediate_size=1024, num_key_value_heads=2, attn_implementation="sdpa", **common
            ),
            "sdpa",
        ),
        "phi3-fused": (
            T.Phi3Config(
                intermediate_size=688,
                num_key_value_heads=2,
                pad_token_id=0,
                attn_implementation="sdpa",
                **common,
            ),
            "sdpa",
        ),
    }


def _saved_bytes(config, method: str, micro_batch: int, targets) -> int:
    import torch
    import transformers as T

    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.train()
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(model, LoraConfig(r=8, target_modules=targets, lora_dropout=0.0))
        layer = model.base_model.model.model.layers[0]
    else:
        layer = model.model.layers[0]
    ids = torch.randint(0, 512, (micro_batch, SEQ))
    mask = torch.ones(micro_batch, SEQ, dtype=torch.long)
    if micro_batch > 1:
        mask[0, -16:] = 0  # a padded batch, as TRL's collator makes it
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inside = [False]
    saved: dict[int, int] = {}
    layer.register_forward_pre_hook(lambda *a: inside.__setitem__(0, True))
    layer.register_forward_hook(lambda *a: inside.__setitem__(0, False))

    def pack(t):
        if inside[0] and isinstance(t, torch.Tensor):
            key = t.untyped_storage().data_ptr()
            if key not in params:
                saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask, labels=ids)
    return sum(saved.values())


CASES = [
    (name, method, mb, targets)
    for name in ("llama-sdpa", "llama-eager", "qwen2-bias", "starcoder2-plain-mlp", "phi3-fused")
    for method, mb, targets in (("full", 1, None), ("full", 2, None), ("lora", 2, "all-linear"))
] + [("llama-sdpa", "lora", 2, ["q_proj", "v_proj"])]


@pytest.mark.parametrize(("name", "method", "micro_batch", "targets"), CASES)
def test_layer_activations_match_autograd(
    tmp_path: Path, name: str, method: str, micro_batch: int, targets
) -> None:
    config, attn = _configs()[name]
    config.save_pretrained(tmp_path)
    spec = load_model(str(tmp_path))
    measured = _saved_bytes(config, method, micro_batch, targets)
    short = ("all-linear",) if targets in (None, "all-linear") else ("q", "v")
    settings = MemorySettings(
        method=method,
        micro_batch=micro_batch,
        seq_len=SEQ,
        lora_dropout=0.0,
        lora_targets=short,
        attn=attn,
        framework="hf",
    )
    estimate = _layer_activation_bytes(spec, settings, 2, micro_batch * SEQ)
    assert abs(estimate - measured) / measured < 0.08, (estimate, measured)
