"""How a model's decoder layer computes, read from its config.json: the norms, the MLP's
activation, the attention pattern. These decide what a layer keeps for its backward pass
(`planner.activations`); transformers' class defaults fill in what a config.json leaves out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # arch imports this module
    from planner.arch import ModelSpec


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


# transformers' class defaults for the keys that decide how a layer computes, where
# config.json files leave them out.
_SLIDING_DEFAULT = {"mistral": 4096, "gemma2": 4096, "gemma3_text": 4096, "starcoder2": 4096}
_ACT_DEFAULT = {
    "gemma": "gelu_tanh",
    "gemma2": "gelu_tanh",
    "gemma3_text": "gelu_tanh",
    "phi": "gelu_new",
    "gpt_neox": "gelu",
    "falcon": "gelu",
    "starcoder2": "gelu_tanh",
}
_ACT_NAMES = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
}


def layer_style(cfg: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """How a layer of this model computes (norms, activation, attention pattern)."""
    t = spec.model_type
    act = _get(cfg, "hidden_activation", "hidden_act", "activation_function", default=None)
    act_kind = _ACT_NAMES.get(str(act)) if act else None
    style: dict[str, Any] = {
        "norm_style": "gemma" if t.startswith("gemma") else spec.norm_kind.replace("rms", "llama"),
        "post_attention_norm": t in ("gemma2", "gemma3_text"),
        "qk_norm": t in ("qwen3", "qwen3_moe", "gemma3_text", "olmo2"),
        "parallel_block": t == "phi"
        or (t == "gpt_neox" and bool(_get(cfg, "use_parallel_residual", default=True)))
        or (t == "falcon" and bool(_get(cfg, "parallel_attn", default=True))),
        "mlp_act": act_kind or _ACT_DEFAULT.get(t, "silu"),
        # Gemma 2 softcaps unless its config sets the cap to null
        "attn_softcap": t == "gemma2" and cfg.get("attn_logit_softcapping", 50.0) is not None,
    }
    # a null in config.json means no window; a missing key, the class default
    window = cfg["sliding_window"] if "sliding_window" in cfg else _SLIDING_DEFAULT.get(t)
    if t in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe") and not cfg.get("use_sliding_window"):
        window = None
    window = int(window) if isinstance(window, int) and window > 0 else 0
    layers = spec.num_layers
    sliding = 0
    if window:
        types = cfg.get("layer_types")
        if isinstance(types, list) and len(types) >= layers:
            sliding = sum(1 for kind in types[:layers] if kind == "sliding_attention")
        elif t == "gemma2":
            sliding = (layers + 1) // 2
        elif t == "gemma3_text":
            pattern = int(_get(cfg, "sliding_window_pattern", default=6))
            sliding = layers - layers // pattern
        else:
            sliding = layers
    style["sliding_window"] = window if sliding else 0
    style["sliding_layers"] = sliding
    return style
