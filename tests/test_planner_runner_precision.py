"""The planner plans the precision the runner trains in: for every method and every way a preset
can set bf16, fp16 and the load dtype, the bytes per base weight the planner counts equal the
bytes of the dtype the runner loads the model in on a GPU, and the model really loads so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from planner.from_preset import _precision
from planner.memory import _weight_bytes
from presets import validate

torch = pytest.importorskip("torch")
train_build = pytest.importorskip("runner.train_build")

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto: a bf16 checkpoint

FLAGS: list[dict[str, Any]] = [
    {"bf16": True},
    {"fp16": True},
    {},
    {"bf16": True, "model_init_kwargs": {"dtype": "float32"}},
    {"fp16": True, "model_init_kwargs": {"dtype": "float32"}},
    {"model_init_kwargs": {"dtype": "bfloat16"}},
    {"bf16": True, "model_init_kwargs": {"torch_dtype": "float16"}},
]


def _preset(method: str, training: dict[str, Any], model: str = "m") -> Any:
    return validate(
        {
            "name": "p",
            "model": model,
            "dataset": {"path": "d.jsonl"},
            "method": method,
            "training": {"max_steps": 2, **training},
        },
        "p.yaml",
    )


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("training", FLAGS)
def test_planned_weight_bytes_match_the_runner_load_dtype(
    method: str, training: dict[str, Any]
) -> None:
    preset = _preset(method, training)
    init = training.get("model_init_kwargs") or {}
    named = init.get("dtype", init.get("torch_dtype"))
    loaded = named or train_build.load_dtype(preset, on_gpu=True)
    assert _weight_bytes(_precision(preset.training, method)) == BYTES[loaded]


def test_cpu_always_loads_fp32() -> None:
    for method in ("full", "lora"):
        assert train_build.load_dtype(_preset(method, {"bf16": True}), on_gpu=False) == "float32"


@pytest.mark.parametrize(
    ("method", "training", "expected"),
    [
        ("full", {"bf16": True}, torch.bfloat16),
        ("full", {"fp16": True}, torch.float32),
        ("lora", {"fp16": True}, torch.float16),
        ("full", {"bf16": True, "model_init_kwargs": {"dtype": "float32"}}, torch.float32),
    ],
)
def test_the_model_is_loaded_in_that_dtype(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str, training: dict, expected: Any
) -> None:
    """build_model as it runs on a GPU (CUDA reported present), on the demo model."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model_dir = str(demo_dir / "model")
    model = train_build.build_model(_preset(method, training, model_dir), model_dir)
    assert next(model.parameters()).dtype == expected


# ---------------------------------------------------------------- QLoRA's 16-bit parameters


def _qlora_model(demo_dir: Path, compute_dtype: str, gradient_checkpointing: bool = True) -> Any:
    """The demo model loaded in 4-bit the way the runner loads it, and prepared by it."""
    from transformers import AutoModelForCausalLM

    model_dir = str(demo_dir / "model")
    preset = validate(
        {
            "name": "q",
            "model": model_dir,
            "dataset": {"path": str(demo_dir / "chat.jsonl")},
            "method": "qlora",
            "quantization": {"compute_dtype": compute_dtype},
            "training": {"max_steps": 2, "gradient_checkpointing": gradient_checkpointing},
        },
        "q.yaml",
    )
    kwargs = train_build.model_init_kwargs(preset, on_gpu=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu", **kwargs)
    return preset, train_build.prepare_quantized(model, preset)


def test_qlora_keeps_the_16_bit_parameters_in_the_bytes_the_planner_counts(
    demo_dir: Path,
) -> None:
    """Everything bitsandbytes leaves unquantised (embeddings, LM head, norms) stays in the
    compute dtype after the runner's preparation: what the planner counts per parameter."""
    from planner.memory import qlora_unquantized_bytes

    _, model = _qlora_model(demo_dir, "bfloat16")
    sixteen_bit = [
        (name, p.dtype) for name, p in model.named_parameters() if type(p).__name__ != "Params4bit"
    ]
    assert sixteen_bit
    for name, dtype in sixteen_bit:
        assert torch.empty((), dtype=dtype).element_size() == qlora_unquantized_bytes(), name
    assert not any(p.requires_grad for p in model.parameters())


def _qlora_losses(demo_dir: Path, run_dir: Path, prepare: Any) -> list[float]:
    """30 real 4-bit training steps of the demo (bitsandbytes on the CPU), the base prepared
    by `prepare`; the logged losses."""
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    preset, _ = _qlora_model(demo_dir, "float32")
    preset = preset.model_copy(
        update={
            "training": {
                "max_steps": 30,
                "per_device_train_batch_size": 4,
                "learning_rate": 0.01,
                "max_length": 64,
                "logging_steps": 1,
                "gradient_checkpointing": True,
                "report_to": "none",
                "save_strategy": "no",
                "seed": 0,
            }
        }
    )
    kwargs = train_build.model_init_kwargs(preset, on_gpu=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        str(demo_dir / "model"), device_map="cpu", **kwargs
    )
    model = prepare(model, preset)
    train, _ = train_build.load_data(preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(
            model=model,
            args=train_build.training_arguments(preset, run_dir, 1),
            train_dataset=train,
            processing_class=AutoTokenizer.from_pretrained(demo_dir / "model"),
            peft_config=train_build.lora_config(preset),
        )
        trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


@pytest.mark.slow
def test_qlora_trains_on_the_demo_after_the_runners_preparation(
    demo_dir: Path, tmp_path: Path
) -> None:
    """Real 4-bit training of the demo after `prepare_quantized`: the loss falls, and ends
    where it does after PEFT's own preparation with its fp32 upcast (same seed, same data)."""
    from peft import prepare_model_for_kbit_training

    def peft_prepare(model: Any, preset: Any) -> Any:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)

    ours = _qlora_losses(demo_dir, tmp_path / "ours", train_build.prepare_quantized)
    peft = _qlora_losses(demo_dir, tmp_path / "peft", peft_prepare)
    for losses in (ours, peft):
        assert len(losses) == 30
        assert all(torch.isfinite(torch.tensor(losses)))
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert abs(sum(ours[-5:]) - sum(peft[-5:])) / 5 < 0.1, (ours, peft)


def test_gemma2_builds_with_the_attention_transformers_supports_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers refuses SDPA for Gemma 2; with no attention named in the preset the runner
    leaves the choice to transformers (eager for Gemma 2, SDPA for Llama), and the planner
    plans the same."""
    import transformers

    from planner.arch import load_model
    from planner.memory import attention_kernel

    tiny = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for config_cls, expected in (
        (transformers.Gemma2Config, "eager"),
        (transformers.LlamaConfig, "sdpa"),
    ):
        folder = tmp_path / config_cls.__name__
        transformers.AutoModelForCausalLM.from_config(config_cls(**tiny)).save_pretrained(folder)
        model = train_build.build_model(_preset("lora", {"bf16": True}, str(folder)), str(folder))
        assert model.config._attn_implementation == expected
        assert attention_kernel(load_model(str(folder)), "sdpa") == expected
