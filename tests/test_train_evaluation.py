"""Evaluation during training: early stopping as a preset option (checked with clear messages),
stopping a demo that overfits, with the step where its eval loss turned reported by `runs`,
`runs --json` and the monitor, and sample answers every K steps in the run folder and monitor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from presets.store import PresetError, load_preset
from runner.curves import Curves, overfitting
from runner.runs import read_metrics, read_state


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _finished(run_dir: Path) -> bool:
    state = read_state(run_dir)
    return state is not None and state.status in ("completed", "failed", "interrupted")


def _refusal(*overrides: str) -> str:
    with pytest.raises(PresetError) as caught:
        load_preset("demo", ["evaluation.early_stopping_patience=2", *overrides])
    return "\n".join(caught.value.lines)


def test_early_stopping_settings_are_checked_with_clear_messages() -> None:
    preset = load_preset("demo", ["evaluation.early_stopping_patience=2"])
    assert preset.evaluation.early_stopping_patience == 2
    assert "training.eval_strategy: evaluation.early_stopping_patience needs evaluations" in (
        _refusal("training.eval_strategy='no'")
    )
    assert "training.save_strategy: early stopping keeps the best checkpoint" in _refusal(
        "training.save_strategy=epoch"
    )
    assert "training.save_steps: must be a multiple of training.eval_steps (20)" in _refusal(
        "training.save_steps=30"
    )
    assert "training.load_best_model_at_end: early stopping keeps the best checkpoint" in (
        _refusal("training.load_best_model_at_end=false")
    )
    assert "evaluation.early_stopping_patience: must be at least 1, got 0" in _refusal(
        "evaluation.early_stopping_patience=0"
    )
    # Without early stopping, none of this is asked for.
    load_preset("demo", ["training.eval_strategy='no'", "training.save_steps=30"])


def test_overfitting_rule_names_the_turn() -> None:
    train = [(float(s), 3.0 - s / 100) for s in range(1, 61)]
    evals = [(10.0, 2.9), (20.0, 2.7), (30.0, 2.75), (40.0, 2.8)]
    found = overfitting(Curves(train, evals))
    assert found is not None and found.turn_step == 20 and found.last_step == 40
    assert "since step 20 (2.700 → 2.800 at step 40)" in found.message()
    assert overfitting(Curves(train, evals[:3])) is None  # one worse evaluation is noise
    assert overfitting(Curves(train, [*evals, (50.0, 2.6)])) is None  # it came back down
    flat_train = [(s, 2.0) for s, _ in train]
    assert overfitting(Curves(flat_train, evals)) is None  # train loss not falling


OVERFIT = [
    "training.max_steps=300",
    "training.eval_steps=5",
    "training.save_steps=5",
    "training.learning_rate=0.03",
    "training.lr_scheduler_type=constant",
    "lora.dropout=0",
    "evaluation.early_stopping_patience=2",
    "evaluation.samples_every_steps=20",
    "evaluation.sample_prompts=2",
    "evaluation.sample_max_new_tokens=12",
]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNEDECK_HOME": str(home), "COLUMNS": "120"}
    env.pop("TUNEDECK_RUNS", None)
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """A demo trained on 4 rows until early stopping ends it (one run for the module)."""
    home = tmp_path_factory.mktemp("overfit-home")
    (home / "data").mkdir()
    (home / "data" / "demo").symlink_to(demo_dir, target_is_directory=True)
    tiny = home / "tiny.jsonl"
    rows = (demo_dir / "chat.jsonl").read_text().splitlines()[:4]
    tiny.write_text("\n".join(rows) + "\n")
    args = ["demo", "--name", "overfit", "--set", f"dataset.path={tiny}", "--json"]
    for item in OVERFIT:
        args += ["--set", item]
    out = _cli(home, *args)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    _wait(lambda: _finished(run_dir), 400, "the overfitting run")
    return run_dir


def test_early_stopping_stops_an_overfitting_demo_and_reports_the_turn(overfit_run: Path) -> None:
    from safetensors.numpy import load_file

    run_dir = overfit_run
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "completed", log[-3000:]
    assert state.max_steps == 300 and state.step < 300
    evals = [
        (r["step"], r["eval_loss"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if "eval_loss" in r
    ]
    best_step, best_loss = min(evals, key=lambda p: p[1])
    assert evals[-1][0] == state.step
    assert [loss > best_loss for _, loss in evals[-2:]] == [True, True]  # rose twice: stopped
    assert f"early stopping at step {state.step}" in log and f"checkpoint-{best_step}" in log
    # The output is the best checkpoint, not the last step.
    best = load_file(
        run_dir / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors"
    )
    kept = load_file(run_dir / "output" / "adapter_model.safetensors")
    assert best.keys() == kept.keys()
    assert all((best[k] == kept[k]).all() for k in best)

    home = run_dir.parent.parent
    out = _cli(home, "runs")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert f"overfit: stopped early at step {state.step} of 300" in text
    assert f"best eval loss {best_loss:.3f} at step {best_step}" in text
    assert f"overfit: warning: eval loss rising since step {best_step}" in text
    listed = json.loads(_cli(home, "runs", "--json").stdout)["runs"][0]
    assert listed["overfitting"]["turn_step"] == best_step
    assert listed["early_stopped"].startswith(f"stopped early at step {state.step}")

    samples = [
        json.loads(line) for line in (run_dir / "train_samples.jsonl").read_text().splitlines()
    ]
    steps = sorted({s["step"] for s in samples})
    assert steps == list(range(20, state.step + 1, 20))
    assert all(len([s for s in samples if s["step"] == k]) == 2 for k in steps)
    assert all(
        s["prompt_text"] and s["reference"] and isinstance(s["answer"], str) for s in samples
    )


@pytest.mark.asyncio
async def test_monitor_shows_the_turn_and_the_newest_samples(overfit_run: Path) -> None:
    from fake_nvml import two_h100s
    from test_tui_helpers import make_app, screen_text, shows

    from runner.runs import RunStore

    evals = [
        (r["step"], r["eval_loss"])
        for r in read_metrics(overfit_run / "metrics.jsonl")
        if "eval_loss" in r
    ]
    best_step = min(evals, key=lambda p: p[1])[0]
    samples = [
        json.loads(line) for line in (overfit_run / "train_samples.jsonl").read_text().splitlines()
    ]
    newest = max(s["step"] for s in samples)
    root = overfit_run.parent
    app = make_app(two_h100s(), root, store=RunStore(root), watch_run="overfit")
    async with app.run_test(size=(120, 40)) as pilot:
        assert await shows(pilot, f"eval loss rising since step {best_step}"), screen_text(app)
        assert await shows(pilot, f"at step {newest}", "Q ", "A "), screen_text(app)


def test_early_stopping_without_eval_data_fails_with_the_reason(
    demo_home: Path, tunedeck: Any
) -> None:
    out = tunedeck(
        "demo", "--name", "noeval", "--json",
        "--set", "dataset.eval_path=null", "--set", "evaluation.early_stopping_patience=2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    _wait(lambda: _finished(run_dir), 240, "the run to fail")
    state = read_state(run_dir)
    assert state is not None and state.status == "failed"
    assert state.failure_reason is not None
    assert "evaluation.early_stopping_patience needs eval data" in state.failure_reason
