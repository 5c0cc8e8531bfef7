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
