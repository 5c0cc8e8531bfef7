"""`tunedeck eval` on a real demo run: the tuned model against its base on the run's eval split
and on other data, samples side by side, task metrics, the files in the run folder, refusals.

The demo learns its data, so a tuned demo must score a lower eval loss than its base; and the
evaluation scores the rows as the training did, so the tuned loss is the eval loss the training
logged at its last step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runner.evaluate_metrics import bleu, exact_match, normalise, rouge_l, task_metrics
from runner.runs import read_metrics, read_state
from tui.widgets.eval_view import printable

STEPS = 30


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """A tunedeck home holding one completed demo run, `tuned` (30 steps, eval every 10)."""
    home = tmp_path_factory.mktemp("eval-home")
    (home / "data").mkdir()
    (home / "data" / "demo").symlink_to(demo_dir, target_is_directory=True)
    env = {**os.environ, "TUNEDECK_HOME": str(home)}
    env.pop("TUNEDECK_RUNS", None)
    args = ["demo", "--name", "tuned", "--json"]
    for item in (f"training.max_steps={STEPS}", "training.eval_steps=10", "training.save_steps=10"):
        args += ["--set", item]
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = home / "runs" / "tuned"

    def done() -> bool:
        state = read_state(run_dir)
        return state is not None and state.status in ("completed", "failed", "interrupted")

    _wait(done, 300, "the demo run")
    state = read_state(run_dir)
    assert state is not None and state.status == "completed", (run_dir / "train.log").read_text()
    return home


@pytest.fixture
def run_copy(trained_home: Path, tunedeck_home: Path) -> Path:
    """A copy of the trained run in this test's own home (the demo linked in too)."""
    (tunedeck_home / "data").mkdir(exist_ok=True)
    (tunedeck_home / "data" / "demo").symlink_to(
        (trained_home / "data" / "demo").resolve(), target_is_directory=True
    )
    target = tunedeck_home / "runs" / "tuned"
    shutil.copytree(trained_home / "runs" / "tuned", target, symlinks=True)
    return target


def test_eval_json_tuned_beats_base_with_samples_metrics_and_files(
    run_copy: Path, tunedeck: Any
) -> None:
    out = tunedeck(
        "eval", "tuned", "--samples", "2", "--max-new-tokens", "16", "--json", timeout=300
    )
    assert out.returncode == 0, out.stderr + (run_copy / "eval.log").read_text()[-3000:]
    result = json.loads(out.stdout)
    base, tuned = result["base"], result["tuned"]
    assert tuned["kind"] == "adapter"
    assert tuned["eval_loss"] < base["eval_loss"], (tuned["eval_loss"], base["eval_loss"])
    # Same rows, template, max length and masking as the training's own evaluation.
    logged = [r for r in read_metrics(run_copy / "metrics.jsonl") if "eval_loss" in r]
    assert logged[-1]["step"] == STEPS
    assert abs(tuned["eval_loss"] - logged[-1]["eval_loss"]) < 1e-3
    assert result["data"] == {"source": "the run's eval split", "rows": 32}
    assert result["max_length"] == 128 and result["chat_template"] is True
    assert result["generation"]["stop"] == "<|end|>"
    assert abs(base["perplexity"] - __import__("math").exp(base["eval_loss"])) < 1e-6

    samples = result["samples"]
    assert len(samples) == 2
    for sample in samples:
        assert sample["prompt_text"] and sample["reference"]
        for side in ("base", "tuned"):
            assert set(sample[side]) == {"greedy", "sampled"}
            assert all(isinstance(v, str) for v in sample[side].values())
    for side in (base, tuned):
        metrics = side["metrics"]
        assert metrics["pairs"] == 2
        for key in ("exact_match", "rouge_l", "bleu"):
            assert isinstance(metrics[key], float), (key, metrics)
    assert tuned["metrics"]["rouge_l"] > base["metrics"]["rouge_l"]

    on_disk = json.loads((run_copy / "eval.json").read_text())
    assert on_disk == result
    lines = (run_copy / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == samples
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".eval")]  # no temp left

    # Seeded: the same run evaluated again gives the same answers, sampled ones included.
    again = tunedeck(
        "eval", "tuned", "--samples", "2", "--max-new-tokens", "16", "--json", timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["samples"] == samples


def test_eval_on_other_data_prints_side_by_side_without_markup(
    run_copy: Path, tunedeck: Any, tmp_path: Path
) -> None:
    data = tmp_path / "alpaca.jsonl"
    rows = [
        {"instruction": "What is 2 plus [bold]2[/bold]?", "output": "2 plus 2 is four."},
        {"instruction": "Spell lamp backwards.", "output": "lamp backwards is pmal."},
        {"instruction": "What number comes after 3?", "output": "After 3 comes four."},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tunedeck(
        "eval", "tuned", "--data", str(data), "--samples", "1", "--max-new-tokens", "8",
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "tuned eval loss" in text and "lower: better" in text
    assert f"on {data} (3 rows" in text
    assert "What is 2 plus [bold]2[/bold]?" in text  # shown as typed, not as markup
    for word in ("eval loss", "perplexity", "exact match", "ROUGE-L", "BLEU", "greedy", "sampled"):
        assert word in text
    assert str(run_copy / "eval.json") in text
    assert json.loads((run_copy / "eval.json").read_text())["data"]["source"] == str(data)


def test_eval_refusals_are_clear(tunedeck_home: Path, tunedeck: Any, demo_dir: Path) -> None:
    runs = tunedeck_home / "runs"
    empty = runs / "unfinished"
    empty.mkdir(parents=True)
    shutil.copy(
        Path(__file__).parent.parent / "presets" / "builtin" / "demo.yaml", empty / "config.yaml"
    )

    def refused(*args: str, expect: str, code: int) -> None:
        out = tunedeck(*args)
        assert out.returncode == code, (args, out.stdout, out.stderr)
        assert expect in out.stderr, (expect, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout

    refused("eval", "unfinished", expect="no tuned model yet", code=1)
    refused("eval", "nope", expect="no such run", code=2)
    refused("eval", "unfinished", "--samples", "-1", expect="--samples must be 0 or more", code=1)
    (empty / "output").mkdir()
    (empty / "output" / "adapter_config.json").write_text("{}")
    refused("eval", "unfinished", "--data", "/no/such/file.jsonl", expect="no such file", code=1)
    (empty / "config.yaml").write_text("name: [broken\n")
    refused("eval", "unfinished", expect="config.yaml", code=1)


# ---------------------------------------------------------------- metrics and text


def test_task_metrics() -> None:
    assert normalise("  Your Apple is  RED. ") == "your apple is red"
    assert exact_match(["Your apple is red", "no"], ["your apple is red.", "yes"]) == 0.5
    assert exact_match([], []) is None
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    assert rouge_l(["a b c d"], ["a b"]) == pytest.approx(2 / 3)  # P 1/2, R 1: F1 2/3
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu(["dog"], ["the cat sat on the mat"]) == pytest.approx(0.0)
    metrics = task_metrics(["x"], ["x"])
    assert metrics["pairs"] == 1 and metrics["exact_match"] == 1.0 and "unavailable" not in metrics


def test_printable_hides_control_characters() -> None:
    assert printable("a\x1b[2Jb\x07c\nd\te\x9b") == "a\ufffd[2Jb\ufffdc\nd\te\ufffd"


# ---------------------------------------------------------------- the app's eval screen


def _eval_app(root: Path) -> Any:
    from fake_nvml import two_h100s
    from test_tui_helpers import make_app

    from runner.runs import RunStore

    return make_app(two_h100s(), root, store=RunStore(root))


@pytest.mark.asyncio
async def test_eval_screen_runs_an_evaluation_and_shows_it(run_copy: Path) -> None:
    from test_tui_helpers import screen_text, shows, wait_for

    from tui.screens.evaluate import EvalScreen

    app = _eval_app(run_copy.parent)
    async with app.run_test(size=(110, 40)) as pilot:
        app.push_screen(EvalScreen("tuned", samples=1))
        assert await shows(pilot, "not evaluated yet")
        await pilot.press("e")
        assert await wait_for(pilot, lambda: (run_copy / "eval.json").is_file(), timeout_s=300)
        assert await shows(pilot, "tuned eval loss", "lower: better", "sample 1 of 1", "greedy")
        result = json.loads((run_copy / "eval.json").read_text())
        assert result["tuned"]["eval_loss"] < result["base"]["eval_loss"]
        loss = f"{result['tuned']['eval_loss']:.4g}"
        assert await shows(pilot, loss, "e evaluates again"), screen_text(app)


@pytest.mark.asyncio
async def test_eval_screen_shows_results_as_typed_and_refusals(tunedeck_home: Path) -> None:
    from test_tui_helpers import screen_text, shows

    from runner.evaluate import write_results
    from tui.screens.evaluate import EvalScreen
    from tui.screens.home import HomeScreen

    root = tunedeck_home / "runs"
    run_dir = root / "r1"
    run_dir.mkdir(parents=True)
    shutil.copy(
        Path(__file__).parent.parent / "presets" / "builtin" / "demo.yaml", run_dir / "config.yaml"
    )
    side = {"greedy": "[red]not red[/red]", "sampled": "bell\x07here"}
    write_results(
        run_dir,
        {
            "run_id": "r1",
            "data": {"source": "the run's eval split", "rows": 4},
            "max_length": 64,
            "base": {
                "eval_loss": 2.5,
                "perplexity": 12.18,
                "metrics": {"pairs": 1, "exact_match": 0.0},
            },
            "tuned": {
                "kind": "adapter",
                "eval_loss": 2.75,
                "metrics": {"pairs": 1, "exact_match": 1.0},
            },
            "samples": [
                {"prompt_text": "say [b]hi[/b]", "reference": "hi", "base": side, "tuned": side}
            ],
        },
    )
    app = _eval_app(root)
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.screen, HomeScreen)
        assert await shows(pilot, "r1")
        await pilot.press("v")  # eval of the selected run, from the runs list
        assert await shows(pilot, "say [b]hi[/b]", "[red]not red[/red]", "bell\ufffdhere")
        assert await shows(pilot, "not lower: no better than the base", "0/1", "1/1")
        assert isinstance(app.screen, EvalScreen)
        await pilot.press("e")  # no tuned model in this folder: refused, on the status line
        assert await shows(pilot, "evaluation: r1: no tuned model yet")
        assert "Traceback" not in screen_text(app)
