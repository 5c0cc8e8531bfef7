"""Model architectures: a `config.json` read into the shapes that decide memory and FLOPs.

Every count here is what `sum(p.numel() for p in model.parameters())` gives for the
transformers model class of that `model_type`, module by module, so LoRA adapters can be
counted exactly too. Mixture-of-experts layers keep their experts as stacked 3-D parameters
(not `nn.Linear`), as current transformers does, so PEFT's `all-linear` leaves them alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from planner.layer_style import layer_style

# Package data (config.json numbers and the GPU table), read on first use.
DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Linear:
    """One `nn.Linear` inside every decoder layer (`count` of them when repeated)."""

    name: str
    """Module name as transformers spells it (`q_proj`, `query_key_value`, `fc1`)."""
    roles: tuple[str, ...]
    """Short names it answers to: q, k, v, o, gate, up, down (a fused module has several)."""
    in_features: int
    out_features: int
    bias: bool
    kind: str
    """`attention` or `mlp`: which block it belongs to (for the breakdown)."""

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class ModelSpec:
    """The shapes of a decoder-only language model."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    mlp_gated: bool
    norm_kind: str
    """`rms` (RMSNorm, weight only) or `layer` (LayerNorm, weight and bias)."""
    linears: tuple[Linear, ...]
    """The `nn.Linear` modules of one decoder layer."""
    norm_params_per_layer: int
    final_norm_params: int
    lm_head_bias: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    router_params_per_layer: int = 0
    """The router (`mlp.gate`): a plain weight, not an `nn.Linear`, in current transformers."""
    expert_params_per_layer: int = 0
    all_linear_extra_per_rank: int = 0
    """Adapter parameters per unit of rank, per layer, that PEFT's `all-linear` adds beyond
    the `nn.Linear` modules: for Mixtral, the router and the stacked 3-D expert weights."""
    norm_style: str = "llama"
    """How its norms compute: `llama` (RMSNorm in fp32, weight times the bf16 result),
    `gemma` (RMSNorm times 1 + weight, in fp32) or `layer` (LayerNorm)."""
    post_attention_norm: bool = False
    """Gemma 2 and 3: norms after the attention and after the MLP too (four per layer)."""
    qk_norm: bool = False
    """RMSNorm on the query and key heads (Qwen3, Gemma 3, OLMo 2)."""
    parallel_block: bool = False
    """Attention and MLP read the same normalised input (Phi-2, GPT-NeoX, Falcon)."""
    mlp_act: str = "silu"
    """The MLP's activation: silu, gelu_tanh, gelu_new (tanh-GELU in parts) or gelu."""
    sliding_window: int = 0
    """Sliding-window attention span (0: none); layers past it need a materialised mask."""
    sliding_layers: int = 0
    """How many layers use the sliding window."""
    attn_softcap: bool = False
    """Gemma 2's tanh softcapping of the attention scores."""

    # ----------------------------------------------------------------- parameter counts
    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of the output layer that are not shared with the input embedding."""
        head = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return head + (self.vocab_size if self.lm_head_bias else 0)

    def linear_params(self, kind: str | None = None) -> int:
        """Parameters of the layers' `nn.Linear` modules (of one block kind, or all)."""
        per_layer = sum(m.params for m in self.linears if kind is None or m.kind == kind)
        return per_layer * self.num_layers

    @property
    def norm_params(self) -> int:
        return self.norm_params_per_layer * self.num_layers + self.final_norm_params

    @property
    def expert_params(self) -> int:
        return self.expert_params_per_layer * self.num_layers

    @property
    def router_params(self) -> int:
        return self.router_params_per_layer * self.num_layers

    def params_by_kind(self) -> dict[str, int]:
        """Exact parameter count per module kind; the values sum to `total_params`."""
        return {
            "embeddings": self.embedding_params,
            "attention": self.linear_params("attention"),
            "mlp": self.linear_params("mlp"),
            "experts": self.expert_params,
            "router": self.router_params,
            "norms": self.norm_params,
            "lm_head": self.lm_head_params,
        }

    @property
    def total_params(self) -> int:
        return sum(self.params_by_kind().values())

    @property
    def quantizable_params(self) -> int:
        """Weights bitsandbytes turns to 4-bit: the layers' linears and experts (not their
        biases, the embeddings, lm_head or norms, which stay 16-bit)."""
        weights = sum(m.in_features * m.out_features for m in self.linears) * self.num_layers
        return weights + self.expert_params

    @property
    def active_params(self) -> int:
        """Parameters one token passes through (all but the unused experts)."""
        if not self.num_experts:
            return self.total_params - self.embedding_params * (0 if self.tied_embeddings else 1)
        used = self.expert_params * self.experts_per_token // self.num_experts
        dense = self.total_params - self.expert_params + used
        return dense - self.embedding_params * (0 if self.tied_embeddings else 1)

    def roles(self) -> tuple[str, ...]:
        """The short names its linears answer to."""
        return tuple(dict.fromkeys(role for m in self.linears for role in m.roles))

    @property
    def supports_sdpa(self) -> bool:
        """Whether transformers runs this model with SDPA (its default); Gemma 2's loader
        refuses SDPA and runs eager attention."""
        return self.model_type not in NO_SDPA

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def mlp_width(self) -> int:
        """Width of the MLP's hidden activation one token sees (all active experts)."""
        if self.num_experts:
            shared = sum(m.out_features for m in self.linears if "up" in m.roles)
            return self.expert_intermediate_size * self.experts_per_token + shared
        return self.intermediate_size


# --------------------------------------------------------------------- LoRA targets

SHORT_NAMES = ("q", "k", "v", "o", "gate", "up", "down")


def parse_targets(targets: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`"q,v"`, `"all-linear"` or a list of names -> a tuple of target names."""
    if isinstance(targets, str):
        items = [t.strip() for t in targets.split(",")]
    else:
        items = [str(t).strip() for t in targets]
    items = [t for t in items if t]
    if not items:
        raise PlanError(["lora_targets: empty; use all-linear, q,v or module names"])
    return tuple(items)


def lora_modules(spec: ModelSpec, targets: tuple[str, ...]) -> tuple[Linear, ...]:
    """The per-layer linears PEFT wraps for these targets (short names map to roles)."""
    if targets == ("all-linear",):
        return spec.linears
    chosen: list[Linear] = []
    unknown: list[str] = []
    for target in targets:
        if target == "all-linear":
            return spec.linears
        hits = [m for m in spec.linears if target == m.name or target in m.roles]
        if not hits:
            unknown.append(target)
        chosen.extend(h for h in hits if h not in chosen)
    if unknown:
        names = ", ".join(sorted({m.name for m in spec.linears}))
        raise PlanError(
            [
                f"lora_targets: {', '.join(unknown)} not found in {spec.name}; "
                f"its linear modules are {names} (or use q,k,v,o,gate,up,down or all-linear)"
            ]
        )
    return tuple(m for m in spec.linears if m in chosen)


def lora_params(spec: ModelSpec, targets: tuple[str, ...], rank: int) -> int:
    """Trainable parameters of a LoRA adapter: r x (in + out) per wrapped linear."""
    per_layer = sum(rank * (m.in_features + m.out_features) for m in lora_modules(spec, targets))
    if "all-linear" in targets:
        per_layer += rank * spec.all_linear_extra_per_rank
    return per_layer * spec.num_layers


# --------------------------------------------------------------------- config.json


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


# Class defaults of `tie_word_embeddings` where config.json files usually leave it out.
_TIED_DEFAULT = {
    "gemma": True,
    "gemma2": True,
    "gemma3_text": True,
    "starcoder2": True,
    "falcon": True,
    "qwen2": False,
}

_LLAMA_LIKE = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "olmo2",
    "granite",
    "smollm3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
}
SUPPORTED_TYPES = (*sorted(_LLAMA_LIKE), "phi3", "phi", "gpt_neox", "starcoder2", "falcon")
# Model types transformers does not run with SDPA (its default attention elsewhere).
NO_SDPA = frozenset({"gemma2"})


def _as_int(cfg: dict[str, Any], where: str, *keys: str, default: Any = None) -> int:
    value = _get(cfg, *keys, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlanError([f"{where}: {keys[0]} must be a positive integer, got {value!r}"])
    return value


def spec_from_config(cfg: dict[str, Any], name: str, where: str | None = None) -> ModelSpec:
    """Read a transformers `config.json` (as a dict) into a `ModelSpec`."""
    spec = _shapes_from_config(cfg, name, where)
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", "")}
    return replace(spec, **layer_style(cfg, spec))


def _shapes_from_config(cfg: dict[str, Any], name: str, where: str | None = None) -> ModelSpec:
    where = where or name
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", "")}
    model_type = str(cfg.get("model_type", ""))
    if model_type not in SUPPORTED_TYPES:
        raise PlanError(
            [
                f"{where}: model_type {model_type!r} is not supported; known: "
                + ", ".join(SUPPORTED_TYPES)
            ]
        )
    h = _as_int(cfg, where, "hidden_size", "n_embd", "d_model")
    layers = _as_int(cfg, where, "num_hidden_layers", "n_layer", "num_layers")
    heads = _as_int(cfg, where, "num_attention_heads", "n_head")
    vocab = _as_int(cfg, where, "vocab_size")
    head_dim = _as_int(cfg, where, "head_dim", default=h // heads)
    tied = bool(_get(cfg, "tie_word_embeddings", default=_TIED_DEFAULT.get(model_type, False)))
    if model_type == "falcon":
        return _falcon(cfg, name, where, h, layers, heads, vocab, tied)
    kv = _as_int(cfg, where, "num_key_value_heads", default=heads)
    inter = _as_int(cfg, where, "intermediate_size", "n_inner", default=4 * h)
    q_dim, kv_dim = heads * head_dim, kv * head_dim
    common: dict[str, Any] = dict(
        name=name,
        model_type=model_type,
        hidden_size=h,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        tied_embeddings=tied,
    )
    if model_type in _LLAMA_LIKE:
        # Qwen2 (and its MoE) put biases on q, k and v only; Llama's attention_bias covers
        # all four projections.
        qwen = model_type in ("qwen2", "qwen2_moe")
        qkv_bias = qwen or bool(_get(cfg, "attention_bias", default=False))
        o_bias = qkv_bias and not qwen
        mlp_bias = bool(_get(cfg, "mlp_bias", default=False))
        attn = (
            Linear("q_proj", ("q",), h, q_dim, qkv_bias, "attention"),
            Linear("k_proj", ("k",), h, kv_dim, qkv_bias, "attention"),
            Linear("v_proj", ("v",), h, kv_dim, qkv_bias, "attention"),
            Linear("o_proj", ("o",), q_dim, h, o_bias, "attention"),
        )
        norms = 2 * h
        if model_type in ("gemma2", "gemma3_text"):
            norms = 4 * h
        if model_type in ("qwen3", "qwen3_moe", "gemma3_text", "olmo2"):
            norms += 2 * head_dim if model_type != "olmo2" else q_dim + kv_dim
        extra: dict[str, Any] = {}
        if model_type in ("mixtral", "qwen2_moe", "qwen3_moe"):
            experts = _as_int(cfg, where, "num_local_experts", "num_experts")
            top_k = _as_int(cfg, where, "num_experts_per_tok")
            expert_inter = _as_int(cfg, where, "moe_intermediate_size", default=inter)
            mlp: tuple[Linear, ...] = ()
            if model_type == "qwen2_moe":
                shared = _as_int(cfg, where, "shared_expert_intermediate_size")
                mlp = (
                    Linear("gate_proj", ("gate",), h, shared, False, "mlp"),
                    Linear("up_proj", ("up",), h, shared, False, "mlp"),
                    Linear("down_proj", ("down",), shared, h, False, "mlp"),
                    Linear("shared_expert_gate", (), h, 1, False, "mlp"),
                )
            extra = dict(
                num_experts=experts,
                experts_per_token=top_k,
                expert_intermediate_size=expert_inter,
                router_params_per_layer=experts * h,
                expert_params_per_layer=experts * 3 * h * expert_inter,
            )
            if model_type == "mixtral":
                # router: r x (h + E); fused gate_up: 2E rank-r factors of (h + 2i), as PEFT
                # splits the fused weight in two; down: E factors of (i + h)
                extra["all_linear_extra_per_rank"] = (
                    (h + experts)
                    + 2 * experts * (h + 2 * expert_inter)
                    + experts * (expert_inter + h)
                )
        else:
            mlp = (
                Linear("gate_proj", ("gate",), h, inter, mlp_bias, "mlp"),
                Linear("up_proj", ("up",), h, inter, mlp_bias, "mlp"),
                Linear("down_proj", ("down",), inter, h, mlp_bias, "mlp"),
            )
        return ModelSpec(
            **common,
            mlp_gated=True,
            norm_kind="rms",
            linears=attn + mlp,
            norm_params_per_layer=norms,
            final_norm_params=h,
            **extra,
        )
    if model_type == "phi3":
        return ModelSpec(
            **common,
            mlp_gated=True,
            norm_kind="rms",
            linears=(
                Linear("qkv_proj", ("q", "k", "v"), h, q_dim + 2 * kv_dim, False, "attention"),
                Linear("o_proj", ("o",), q_dim, h, False, "attention"),
                Linear("gate_up_proj", ("gate", "up"), h, 2 * inter, False, "mlp"),
                Linear("down_proj", ("down",), inter, h, False, "mlp"),
            ),
            norm_params_per_layer=2 * h,
            final_norm_params=h,
        )
    if model_type == "phi":
        return ModelSpec(
            **common,
            mlp_gated=False,
            norm_kind="layer",
            linears=(
                Linear("q_proj", ("q",), h, q_dim, True, "attention"),
                Linear("k_proj", ("k",), h, kv_dim, True, "attention"),
                Linear("v_proj", ("v",), h, kv_dim, True, "attention"),
                Linear("dense", ("o",), q_dim, h, True, "attention"),
                Linear("fc1", ("up",), h, inter, True, "mlp"),
                Linear("fc2", ("down",), inter, h, True, "mlp"),
            ),
            norm_params_per_layer=2 * h,
            final_norm_params=2 * h,
            lm_head_bias=True,
        )
    if model_type == "gpt_neox":
        bias = bool(_get(cfg, "attention_bias", default=True))
        return ModelSpec(
            **common,
            mlp_gated=False,
            norm_kind="layer",
            linears=(
                Linear("query_key_value", ("q", "k", "v"), h, 3 * q_dim, bias, "attention"),
                Linear("dense", ("o",), q_dim, h, bias, "attention"),
                Linear("dense_h_to_4h", ("up",), h, inter, True, "mlp"),
                Linear("dense_4h_to_h", ("down",), inter, h, True, "mlp"),
            ),
            norm_params_per_layer=4 * h,
            final_norm_params=2 * h,
        )
    # starcoder2
    bias = bool(_get(cfg, "use_bias", default=True))
    return ModelSpec(
        **common,
        mlp_gated=False,
        norm_kind="layer",
        linears=(
            Linear("q_proj", ("q",), h, q_dim, bias, "attention"),
            Linear("k_proj", ("k",), h, kv_dim, bias, "attention"),
            Linear("v_proj", ("v",), h, kv_dim, bias, "attention"),
            Linear("o_proj", ("o",), q_dim, h, bias, "attention"),
            Linear("c_fc", ("up",), h, inter, bias, "mlp"),
            Linear("c_proj", ("down",), inter, h, bias, "mlp"),
        ),
        norm_params_per_layer=4 * h,
        final_norm_params=2 * h,
    )


def _falcon(
    cfg: dict[str, Any],
    name: str,
    where: str,
    h: int,
    layers: int,
    heads: int,
    vocab: int,
    tied: bool,
) -> ModelSpec:
    head_dim = h // heads
    new_arch = bool(_get(cfg, "new_decoder_architecture", default=False))
    if new_arch:
        kv = _as_int(cfg, where, "num_kv_heads", default=heads)
    else:
        kv = 1 if bool(_get(cfg, "multi_query", default=True)) else heads
    bias = bool(_get(cfg, "bias", default=False))
    inter = _as_int(cfg, where, "ffn_hidden_size", default=4 * h)
    if new_arch:
        norms = 2 * h * (2 if _get(cfg, "num_ln_in_parallel_attn", default=2) == 2 else 1)
    else:
        norms = 2 * h * (1 if _get(cfg, "parallel_attn", default=True) else 2)
    q_dim = heads * head_dim
    return ModelSpec(
        name=name,
        model_type="falcon",
        hidden_size=h,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        tied_embeddings=tied,
        mlp_gated=False,
        norm_kind="layer",
        linears=(
            Linear(
                "query_key_value",
                ("q", "k", "v"),
                h,
                q_dim + 2 * kv * head_dim,
                bias,
                "attention",
            ),
            Linear("dense", ("o",), q_dim, h, bias, "attention"),
            Linear("dense_h_to_4h", ("up",), h, inter, bias, "mlp"),
            Linear("dense_4h_to_h", ("down",), inter, h, bias, "mlp"),
        ),
        norm_params_per_layer=norms,
        final_norm_params=2 * h,
    )


# --------------------------------------------------------------------- finding a model


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict[str, Any]]:
    """Built-in config.json data of popular models, keyed by hub id."""
    text = (DATA_DIR / "models.json").read_text(encoding="utf-8")
    data: dict[str, dict[str, Any]] = json.loads(text)["models"]
    return data


def _catalogue_key(model: str) -> str | None:
    models = catalogue()
    if model in models:
        return model
    lowered = model.lower()
    for key in models:
        if key.lower() == lowered or key.split("/")[-1].lower() == lowered:
            return key
    for key, entry in models.items():
        if lowered in (a.lower() for a in entry.get("aliases", [])):
            return key
    return None


def _hub_cache_config(model: str) -> Path | None:
    hub = os.environ.get("HF_HUB_CACHE")
    if not hub:
        hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        hub = str(Path(hf_home) / "hub")
    snapshots = Path(hub) / ("models--" + model.replace("/", "--")) / "snapshots"
    if not snapshots.is_dir():
        return None
    found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError([f"{path}: cannot read ({exc.strerror})"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError([f"{path}: not valid JSON ({exc})"]) from None
    if not isinstance(data, dict):
        raise PlanError([f"{path}: expected a JSON object (a transformers config.json)"])
    return data


@lru_cache(maxsize=64)
def _spec_cached(model: str, mtime_ns: int) -> ModelSpec:
    del mtime_ns  # part of the cache key only: an edited config.json is read again
    return _resolve(model)


def load_model(model: str) -> ModelSpec:
    """A model by hub id (catalogue, then the local Hugging Face cache), local folder or
    config.json. Nothing is downloaded: on a box without the model, the catalogue or a
    copied config.json answers."""
    model = model.strip()
    if not model:
        raise PlanError(["model: empty; give a hub id, a local model folder or a config.json"])
    path = Path(os.path.expanduser(model))
    mtime_ns = 0
    if path.exists():
        target = path / "config.json" if path.is_dir() else path
        try:
            mtime_ns = target.stat().st_mtime_ns
        except OSError:
            mtime_ns = -1
    return _spec_cached(model, mtime_ns)


def _resolve(model: str) -> ModelSpec:
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise PlanError([f"{model}: folder has no config.json"])
        return spec_from_config(_read_config(config), str(path), str(config))
    if path.is_file():
        return spec_from_config(_read_config(path), str(path), str(path))
    key = _catalogue_key(model)
    if key is not None:
        return spec_from_config(catalogue()[key]["config"], key)
    cached = _hub_cache_config(model)
    if cached is not None:
        return spec_from_config(_read_config(cached), model, str(cached))
    hint = "; ".join(k for k in catalogue() if model.lower().split("/")[-1][:4] in k.lower())
    raise PlanError(
        [
            f"model {model!r}: not a local folder or config.json, not in the built-in "
            "catalogue and not in the Hugging Face cache"
            + (f" (close: {hint})" if hint else "")
            + "; give a local model folder or its config.json (tunedeck plan --list-models "
            "lists the catalogue; --download fetches a hub model's config.json)"
        ]
    )
