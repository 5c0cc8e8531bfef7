"""`tunedeck compare` and the app's comparison view over run folders: curves, the settings that
differ, figures (speed, time, money, eval results) and refusals."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.evaluate import write_results
from runner.runs import RunState, now_iso, write_state

DEMO = Path(__file__).parent.parent / "presets" / "builtin" / "demo.yaml"


def make_run(
    root: Path, run_id: str, lr: float, eval_losses: list[float], price: float | None
) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    config = yaml.safe_load(DEMO.read_text())
    config["training"]["learning_rate"] = lr
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    write_state(
        run_dir,
        RunState(
            run_id=run_id, status="completed", host=socket.gethostname(), started_at=now_iso(),
            ended_at=now_iso(), step=30, max_steps=30, active_s=90.0, price_usd_per_h=price,
        ),
    )  # fmt: skip
    records: list[dict[str, Any]] = [
        {"step": s, "loss": 3.0 - s * lr, "tokens_per_s": 1000.0 + lr * 1e4} for s in range(1, 31)
    ]
    records += [{"step": 10 * (i + 1), "eval_loss": v} for i, v in enumerate(eval_losses)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.fixture
def two_runs(tunedeck_home: Path) -> Path:
    root = tunedeck_home / "runs"
    make_run(root, "slow-lr", 0.01, [2.9, 2.8, 2.7], price=3.6)
    fast = make_run(root, "fast-lr", 0.02, [2.8, 2.9, 3.0], price=None)
    write_results(
        fast,
        {
            "base": {"eval_loss": 3.5, "metrics": {}},
            "tuned": {"eval_loss": 3.0, "metrics": {"rouge_l": 0.25}},
            "samples": [],
        },
    )
    return root


def test_compare_json_and_text(two_runs: Path, tunedeck: Any) -> None:
    out = tunedeck("compare", "slow-lr", "fast-lr", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    slow, fast = data["runs"]
    assert [slow["run_id"], fast["run_id"]] == ["slow-lr", "fast-lr"]
    assert data["differing"] == {"training.learning_rate": ["0.01", "0.02"]}
    assert slow["best_eval_loss"] == 2.7 and slow["best_eval_step"] == 30
    assert fast["best_eval_loss"] == 2.8 and fast["overfitting_turn_step"] == 10
    assert slow["overfitting_turn_step"] is None
    assert slow["tokens_per_s"] == pytest.approx(1100.0) and fast["tokens_per_s"] == pytest.approx(
        1200.0
    )
    assert slow["elapsed_s"] == 90.0 and slow["cost_usd"] == pytest.approx(0.09)
    assert fast["cost_usd"] is None
    assert fast["base_eval_loss"] == 3.5 and fast["tuned_eval_loss"] == 3.0
    assert fast["tuned_rouge_l"] == 0.25 and slow["tuned_eval_loss"] is None
    assert len(slow["curves"]["train"]) == 30 and len(fast["curves"]["eval"]) == 3

    text = tunedeck("compare", "slow", "fast")  # unique prefixes are enough
    assert text.returncode == 0, text.stderr
    lines = " ".join(text.stdout.split())
    assert "slow-lr train" in lines and "fast-lr eval" in lines  # the chart's legend
    assert "settings that differ" in lines and "training.learning_rate 0.01 0.02" in lines
    assert "best eval 2.7 @30 2.8 @10" in lines
    assert "money $0.09 no price" in lines
    assert "fast-lr: warning: eval loss rising since step 10" in lines


def test_compare_refusals(two_runs: Path, tunedeck: Any) -> None:
    for args, expect in (
        (["slow-lr"], "compare needs at least two runs"),
        (["slow-lr", "nope"], "nope: no such run"),
        (["slow-lr", "slow-lr"], "slow-lr: named more than once"),
    ):
        out = tunedeck("compare", *args)
        assert out.returncode == 2, (args, out.stderr)
        assert expect in out.stderr and "Traceback" not in out.stderr


@pytest.mark.asyncio
async def test_compare_view_of_two_marked_runs(two_runs: Path) -> None:
    from fake_nvml import two_h100s
    from test_tui_helpers import make_app, screen_text, shows, wait_for

    from runner.runs import RunStore
    from tui.screens.compare import CompareScreen

    app = make_app(two_h100s(), two_runs, store=RunStore(two_runs))
    async with app.run_test(size=(110, 40)) as pilot:
        assert await shows(pilot, "slow-lr", "fast-lr")
        await pilot.press("c")  # nothing marked yet: nothing to compare
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)
        assert any("mark two or more runs" in n.message for n in app._notifications)
        await pilot.press("space", "down", "space")
        assert await shows(pilot, "+ slow-lr", "+ fast-lr"), screen_text(app)
        await pilot.press("c")
        assert await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        assert await shows(pilot, "training.learning_rate", "0.01", "0.02", "settings that differ")
        assert await shows(pilot, "best eval", "2.7 @30", "2.8 @10", "overfitting from", "step 10")
        # The chart's legend: train line and eval points of each run.
        for label in ("slow-lr train", "slow-lr eval", "fast-lr train", "fast-lr eval"):
            assert await shows(pilot, label), screen_text(app)
        await pilot.press("b")
        assert await shows(pilot, "Runs")
