"""Run-folder logic: state files, metrics tailing, summaries and the store (no training)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner.runs import (
    MetricsTail,
    RunError,
    RunState,
    RunStore,
    boot_id,
    effective_status,
    now_iso,
    read_state,
    write_state,
)


def make_run(root: Path, run_id: str, **fields: object) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    fields.setdefault("started_at", now_iso())
    state = RunState(run_id=run_id, host=socket.gethostname(), **fields)  # type: ignore[arg-type]
    write_state(run_dir, state)
    return run_dir


def test_state_round_trip_and_owner_only(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "a", status="completed", step=7, max_steps=10)
    state = read_state(run_dir)
    assert state is not None and state.step == 7 and state.status == "completed"
    assert (run_dir / "state.json").stat().st_mode & 0o077 == 0
    # No temporary files left next to it.
    assert sorted(p.name for p in run_dir.iterdir()) == ["state.json"]


def test_read_state_missing_or_garbage_is_none(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    (tmp_path / "state.json").write_text("{not json")
    assert read_state(tmp_path) is None
    (tmp_path / "state.json").write_text('{"status": "running"}')  # no run_id
    assert read_state(tmp_path) is None


def test_metrics_tail_keeps_a_torn_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []  # not there yet
    with path.open("w") as fh:
        fh.write('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert tail.read_new() == [{"step": 1, "loss": 2.0}]
    with path.open("a") as fh:
        fh.write('ss": 1.5}\n')
    assert tail.read_new() == [{"step": 2, "loss": 1.5}]
    assert tail.read_new() == []
    assert not tail.was_reset


def test_metrics_tail_starts_over_when_the_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(1, 6)))
    tail = MetricsTail(path)
    assert len(tail.read_new()) == 5
    path.write_text(json.dumps({"step": 1}) + "\n")
    assert tail.read_new() == [{"step": 1}]
    assert tail.was_reset


def test_running_state_with_a_dead_process_reads_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    state = RunState(
        run_id="x", status="running", pid=proc.pid, host=socket.gethostname(), boot_id=boot_id()
    )
    assert effective_status(state) == "interrupted"
    alive = state.model_copy(update={"pid": os.getpid()})
    assert effective_status(alive) == "running"
    # Our own pid but recorded with another start time: a reused pid, not our run.
    reused = alive.model_copy(update={"pid_create_time": 1.0})
    assert effective_status(reused) == "interrupted"
    other_boot = alive.model_copy(update={"boot_id": "another-boot"})
    assert effective_status(other_boot) == "interrupted"


def test_store_lists_newest_first_with_last_losses(tmp_path: Path) -> None:
    make_run(tmp_path, "old", status="completed", started_at="2026-01-01T00:00:00+00:00")
    new = make_run(
        tmp_path,
        "new",
        status="completed",
        started_at="2026-02-01T00:00:00+00:00",
        ended_at="2026-02-01T00:10:00+00:00",
        active_s=600.0,
        price_usd_per_h=3.0,
    )
    (new / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 2, "eval_loss": 2.7}\n'
    )
    (tmp_path / "not-a-run").mkdir()
    runs = RunStore(tmp_path).list()
    assert [r.run_id for r in runs] == ["new", "old"]
    assert runs[0].last_loss == 2.5 and runs[0].last_eval_loss == 2.7
    assert runs[0].elapsed_s == 600.0
    assert runs[0].cost_usd == pytest.approx(0.5)


def test_store_get_unknown_and_prefix(tmp_path: Path) -> None:
    make_run(tmp_path, "demo-20260101-000000")
    store = RunStore(tmp_path)
    assert store.get("demo-2026").run_id == "demo-20260101-000000"
    assert store.get(str(tmp_path / "demo-20260101-000000")).run_id == "demo-20260101-000000"
    with pytest.raises(RunError) as err:
        store.get("nope")
    assert "no such run" in err.value.lines[0]
    assert RunStore(tmp_path / "missing").list() == []


def test_a_run_not_yet_started_counts_as_starting_for_a_while() -> None:
    starting = RunState(run_id="s", status="running", pid=None, segment_started_at=now_iso())
    assert effective_status(starting) == "running"
    stale = starting.model_copy(update={"segment_started_at": "2026-01-01T00:00:00+00:00"})
    assert effective_status(stale) == "interrupted"
