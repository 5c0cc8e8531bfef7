"""Experiment trackers through `training.report_to`: TensorBoard's event files land in the run
folder (RUN/tensorboard), beside metrics.jsonl, which stays the source of truth."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_runner_e2e import finished, launch_json, wait_for

from runner.runs import read_metrics, read_state

pytestmark = pytest.mark.slow


def test_tensorboard_writes_into_the_run_folder(demo_home: Path, tunedeck: Any) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "tb",
        "--set",
        "training.max_steps=6",
        "--set",
        "training.report_to=[tensorboard]",
        "--set",
        "training.eval_steps=100",
    )
    wait_for(lambda: finished(run_dir), 240, "the run to finish", poll_s=0.2)
    state = read_state(run_dir)
    assert state is not None and state.status == "completed", state
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in run_dir.iterdir())
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    logged = {e.step: e.value for e in accumulator.Scalars("train/loss")}
    losses = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}
    assert sorted(logged) == sorted(losses) == list(range(1, 7))
    assert all(abs(logged[s] - losses[s]) < 1e-4 for s in losses)
