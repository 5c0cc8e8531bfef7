"""Architectures against the real thing: transformers models and PEFT adapters, built tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.arch import catalogue, load_model, lora_params, parse_targets, spec_from_config
from planner.errors import PlanError


def test_catalogue_has_the_popular_models_and_their_published_sizes() -> None:
    models = catalogue()
    assert len(models) >= 30
    families = (
        "Llama-2",
        "Llama-3.1",
        "Llama-3.2",
        "Llama-3.3",
        "Mistral-7B",
        "Mixtral",
        "Qwen2.5",
        "Qwen3",
        "gemma-2",
        "gemma-3",
        "Phi-3",
        "phi-4",
        "TinyLlama",
        "starcoder2",
        "falcon",
        "SmolLM",
    )
    for family in families:
        assert any(family.lower() in key.lower() for key in models), family
    for key, entry in models.items():
        spec = spec_from_config(entry["config"], key)
        published = entry["published_params"]
        assert abs(spec.total_params - published) / published <= 0.005, key


def test_parts_add_up_and_lookups_work() -> None:
    spec = load_model("llama-3.1-8b")  # alias
    assert spec.name == "meta-llama/Llama-3.1-8B"
    assert sum(spec.params_by_kind().values()) == spec.total_params
    assert load_model("meta-llama/Llama-3.1-8B-Instruct").total_params == spec.total_params
    with pytest.raises(PlanError, match="not in the built-in catalogue"):
        load_model("nobody/no-such-model")


# Tiny configs of each architecture kind the planner models.
def _configs():
    import transformers as T

    common = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=96,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return {
        "llama-gqa": T.LlamaConfig(intermediate_size=128, num_key_value_heads=2, **common),
        "qwen2-bias-tied": T.Qwen2Config(
            intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=True, **common
        ),
        "gemma2-tied": T.Gemma2Config(
            intermediate_size=96, num_key_value_heads=2, head_dim=16, **common
        ),
        "qwen3-qknorm": T.Qwen3Config(
            intermediate_size=96, num_key_value_heads=2, head_dim=32, **common
        ),
        "phi3-fused": T.Phi3Config(intermediate_size=96, num_key_value_heads=2, **common),
        "phi-plain-mlp": T.PhiConfig(intermediate_size=96, **common),
        "neox-plain-mlp": T.GPTNeoXConfig(intermediate_size=96, **common),
        "starcoder2-plain-mlp": T.Starcoder2Config(
            intermediate_size=96, num_key_value_heads=2, **common
        ),
        "falcon-mqa": T.FalconConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=96,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "mixtral-moe": T.MixtralConfig(
            intermediate_size=96,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            **common,
        ),
        "qwen2-moe-shared": T.Qwen2MoeConfig(
            intermediate_size=96,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            **common,
        ),
    }


TARGET_SETS = ("all-linear", "q,v", "q,k,v,o", "gate,up,down")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    import torch
    import transformers as T

    torch.manual_seed(0)
    out = {}
    for name, config in _configs().items():
        folder = tmp_path_factory.mktemp(name)
        config.save_pretrained(folder)
        model = T.AutoModelForCausalLM.from_config(config)
        out[name] = (folder, model)
    return out


def _peft_names(spec, targets: str) -> list[str] | str:
    if targets == "all-linear":
        return "all-linear"
    from planner.arch import lora_modules

    return sorted({m.name for m in lora_modules(spec, parse_targets(targets))})


@pytest.mark.filterwarnings("ignore")  # PEFT's notes on unmatched patterns of tiny models
@pytest.mark.parametrize(
    "name",
    [
        "llama-gqa",
        "qwen2-bias-tied",
        "gemma2-tied",
        "qwen3-qknorm",
        "phi3-fused",
        "phi-plain-mlp",
        "neox-plain-mlp",
        "starcoder2-plain-mlp",
        "falcon-mqa",
        "mixtral-moe",
        "qwen2-moe-shared",
    ],
)
def test_counts_match_transformers_and_peft(built, name: str) -> None:
    import copy

    from peft import LoraConfig, get_peft_model

    folder, model = built[name]
    spec = load_model(str(folder))
    assert spec.total_params == sum(p.numel() for p in model.parameters()), name
    assert load_model(str(Path(folder) / "config.json")).total_params == spec.total_params
    for targets in TARGET_SETS:
        try:
            modules = _peft_names(spec, targets)
        except PlanError:
            continue  # e.g. no gate/up/down in a plain MLP
        if not modules:
            continue
        for rank in (4, 8):
            peft_model = get_peft_model(
                copy.deepcopy(model), LoraConfig(r=rank, target_modules=modules)
            )
            trainable, _ = peft_model.get_nb_trainable_parameters()
            assert lora_params(spec, parse_targets(targets), rank) == trainable, (name, targets)


def test_bad_config_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_model(str(bad))
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": -3}))
    with pytest.raises(PlanError, match="hidden_size must be a positive integer"):
        load_model(str(tmp_path))
    bad.write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(PlanError, match="not supported"):
        load_model(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlanError, match=r"no config\.json"):
        load_model(str(tmp_path / "empty"))


def test_a_model_in_the_local_hugging_face_cache(tmp_path: Path, monkeypatch) -> None:
    config = catalogue()["Qwen/Qwen2.5-0.5B"]["config"]
    snapshot = tmp_path / "models--someone--my-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    spec = load_model("someone/my-model")
    assert spec.total_params == catalogue()["Qwen/Qwen2.5-0.5B"]["published_params"]
