"""Numbers and combinations in `training:` that would fail or misbehave at run time are refused
before launch: cheap checks in the schema, TRL's and transformers' own by building the real
config in a child process (`runner.config_check`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from presets import PresetError, load_preset, preset_to_yaml, validate
from runner import config_check

BASE = {"name": "p", "model": "m", "dataset": {"path": "d.jsonl"}}


def problems(training: dict, **extra: object) -> list[str]:
    try:
        validate({**BASE, "training": training, **extra}, "p.yaml")
    except PresetError as exc:
        return exc.lines
    return []


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"learning_rate": float("nan")}, "training.learning_rate: must be a finite number"),
        ({"learning_rate": float("inf")}, "training.learning_rate: must be a finite number"),
        ({"weight_decay": float("-inf")}, "training.weight_decay: must be a finite number"),
        ({"lr_scheduler_kwargs": {"min_lr": float("nan")}}, "must hold only finite numbers"),
        ({"seed": 2**32}, "training.seed: must be at least 0 and below 2**32"),
        ({"seed": -1}, "training.seed: must be at least 0 and below 2**32"),
        ({"data_seed": 2**40}, "training.data_seed: must be at least 0 and below 2**32"),
        ({"max_steps": -5}, "training.max_steps: must be positive, or -1 to train by"),
        ({"max_steps": 0}, "training.max_steps: must be positive, or -1 to train by"),
        ({"max_steps": 1e26}, "training.max_steps: must be an integer, got 1e+26"),
        ({"max_steps": 10**26}, "training.max_steps: must be at most 1,000,000,000"),
        ({"num_train_epochs": 1e26}, "training.num_train_epochs: must be at most"),
        ({"dataloader_num_workers": 2**70}, "training.dataloader_num_workers: must fit in 64"),
        (
            {"save_strategy": "best", "eval_strategy": "steps"},
            "training.metric_for_best_model: required when save_strategy is `best`",
        ),
        (
            {"save_strategy": "best", "metric_for_best_model": "eval_loss"},
            "training.save_strategy: `best` saves only after an evaluation",
        ),
    ],
)
def test_schema_refuses_numbers_the_run_would_choke_on(training: dict, expected: str) -> None:
    lines = problems(training)
    assert any(expected in line for line in lines), lines
    assert all(line.startswith("p.yaml: ") for line in lines)


def test_schema_accepts_the_edges() -> None:
    assert problems({"seed": 0, "data_seed": 2**32 - 1, "max_steps": -1}) == []
    assert problems({"max_steps": 10**9, "learning_rate": 2e-5}) == []
    good_best = {"save_strategy": "best", "eval_strategy": "steps", "metric_for_best_model": "x"}
    assert problems(good_best) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"price_usd_per_h": float("inf")}, "price_usd_per_h: must be a finite number"),
        ({"lora": {"dropout": float("nan")}}, "lora.dropout: must be a finite number"),
        (
            {"dataset": {"path": "d", "eval_fraction": float("nan")}},
            "dataset.eval_fraction: must be a finite number",
        ),
    ],
)
def test_schema_fields_refuse_nan_and_infinity(extra: dict, expected: str) -> None:
    lines = problems({}, **extra)
    assert any(expected in line for line in lines), lines


def test_nan_typed_in_a_set_value_is_refused(demo_home: Path) -> None:
    with pytest.raises(PresetError, match=r"training\.learning_rate: must be a finite number"):
        load_preset("demo", ["training.learning_rate=.nan"])


# ---------------------------------------------------------------- TRL's own checks


def run_check(preset_yaml: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-m", "runner.config_check"],
        input=preset_yaml,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_the_child_reports_what_the_optimizer_and_scheduler_refuse(demo_home: Path) -> None:
    # Both pass the schema: one needs a package that is not installed (torchdistx), the other
    # an argument only the scheduler itself asks for.
    preset = load_preset(
        "demo",
        ["training.optim=adamw_anyprecision", "training.lr_scheduler_type=cosine_with_min_lr"],
    )
    report = run_check(preset_to_yaml(preset))
    fields = {p["field"]: p["message"] for p in report["problems"]}
    assert "torchdistx" in fields["training.optim"]
    assert "min_lr" in fields["training.lr_scheduler_type"]
    assert report["checked_with"].startswith("trl ")
    clean = run_check(preset_to_yaml(load_preset("demo")))
    assert clean["problems"] == []


def test_a_distributed_preset_builds_its_config_in_one_process(tunedeck_home: Path) -> None:
    report = run_check(preset_to_yaml(load_preset("fsdp-full-llama3.1-8b-4gpu")))
    assert report["problems"] == []


def test_preflight_refuses_what_trl_refuses_without_loading_torch(demo_home: Path) -> None:
    """In a fresh interpreter, as the app and the launcher run: the problem names the field,
    and torch never loads in that process."""
    code = (
        "import json, sys\n"
        "from presets import load_preset\n"
        "from runner.launch import preflight\n"
        "preset = load_preset('demo', ['training.load_best_model_at_end=true',\n"
        "    'training.eval_strategy=steps', 'training.save_strategy=epoch'])\n"
        "pf = preflight(preset)\n"
        "print(json.dumps({'problems': pf.problems, 'torch': 'torch' in sys.modules,\n"
        "    'transformers': 'transformers' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["torch"] is False and data["transformers"] is False
    (line,) = [p for p in data["problems"] if p.startswith("training.")]
    assert line.startswith("training.load_best_model_at_end: ")
    assert "save and eval strategy to match" in line


def test_without_the_training_stack_the_check_is_skipped_with_a_warning(
    demo_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine has the stack; a package name that is certainly not installed stands in
    # for a missing one, through the same lookup.
    monkeypatch.setattr(
        config_check, "TRAINING_STACK", ("torch", "tunedeck_no_such_package_for_tests")
    )
    report = config_check.check_training_config(load_preset("demo"))
    assert report.problems == []
    (warning,) = report.warnings
    assert "TRL's own checks skipped: tunedeck_no_such_package_for_tests not installed" in warning
