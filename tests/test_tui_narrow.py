"""At 80 columns (and through a pipe) run ids are whole: `tunedeck runs`, the app's runs list and
the monitor header drop or shrink other things first, and cut nothing mid-word."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_nvml import FakeNvml
from test_tui_helpers import make_app, screen_text, shows, wait_for

from runner.runs import RunState, RunStore, write_state

# Ids as `tunedeck run` makes them (`<preset>-<YYYYmmdd-HHMMSS>[-N]`): two runs of one preset
# started in the same minute differ only in their last characters.
LONG_IDS = (
    "qlora-llama3.1-8b-24gb-20261201-120005-2",
    "qlora-llama3.1-8b-24gb-20261201-120005",
    "fsdp-full-llama3.1-8b-4gpu-20261201-120000",
)


def long_runs(root: Path) -> None:
    states = [
        RunState(
            run_id=LONG_IDS[0],
            status="completed",
            started_at="2026-12-01T12:00:07+00:00",
            ended_at="2026-12-01T18:00:00+00:00",
            step=6000,
            max_steps=6000,
            active_s=20000,
            price_usd_per_h=0.69,
        ),
        RunState(
            run_id=LONG_IDS[1],
            status="failed",
            started_at="2026-12-01T12:00:05+00:00",
            ended_at="2026-12-01T12:05:00+00:00",
            step=3,
            max_steps=6000,
            failure_reason="CUDA out of memory: [bold]try[/] per_device_train_batch_size=1",
        ),
        RunState(
            run_id=LONG_IDS[2],
            status="interrupted",
            started_at="2026-12-01T12:00:00+00:00",
            ended_at="2026-12-01T13:30:00+00:00",
            step=900,
            max_steps=3000,
            active_s=5400,
            price_usd_per_h=2.69,
        ),
    ]
    for state in states:
        run_dir = root / state.run_id
        run_dir.mkdir(parents=True)
        write_state(run_dir, state)


def runs_output(root: Path, columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "runs", "--runs-dir", str(root)],
        capture_output=True,  # stdout is a pipe: no terminal to ask for a width
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def assert_ids_whole(text: str, width: int) -> None:
    lines = text.splitlines()
    for run_id in LONG_IDS:
        # On a line of its own or as the first cell of a row: never cut, never wrapped.
        assert any(line.split(" ")[0] == run_id for line in lines), f"{run_id}:\n{text}"
    assert all(len(line.rstrip()) <= width for line in lines), text
    assert "…" not in "".join(line.split(" ")[0] for line in lines)


@pytest.mark.parametrize("columns", ["80", None, "100", "48"])
def test_runs_command_keeps_ids_whole(tmp_path: Path, columns: str | None) -> None:
    long_runs(tmp_path / "runs")
    text = runs_output(tmp_path / "runs", columns)
    assert_ids_whole(text, int(columns or 80))
    assert "interrupted" in text and "900/3000" in text
    assert "failed: CUDA" in text
    assert "[bold]try[/]" in " ".join(text.split())  # the reason as written, never markup
    if columns == "100":
        assert "cost" in text and "$4.04" in text  # room for everything


def test_runs_command_drops_columns_in_order(tmp_path: Path) -> None:
    long_runs(tmp_path / "runs")
    header = runs_output(tmp_path / "runs", "80").splitlines()[0].split()
    assert header == ["run", "status", "step", "loss", "ETA"]


def table_lines(text: str) -> list[str]:
    """The runs list's rows as the screen shows them, frame removed."""
    return [line.strip("│ ") for line in text.splitlines() if line.startswith("│")]


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
async def test_app_runs_list_keeps_ids_whole(tmp_path: Path, size: tuple[int, int]) -> None:
    root = tmp_path / "runs"
    long_runs(root)
    app = make_app(FakeNvml([]), root, store=RunStore(root), poll_interval_s=3600)
    async with app.run_test(size=size) as pilot:
        assert await shows(pilot, *LONG_IDS)
        rows = table_lines(screen_text(app))
        for run_id in LONG_IDS:
            assert any(line.split(" ")[0] == run_id for line in rows), screen_text(app)
        assert "…" not in "\n".join(rows)
        assert "interrupted" in screen_text(app) and "900/3,000" in screen_text(app)


@pytest.mark.asyncio
async def test_app_runs_list_lays_out_again_on_resize(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    long_runs(root)
    app = make_app(FakeNvml([]), root, store=RunStore(root), poll_interval_s=3600)
    async with app.run_test(size=(120, 30)) as pilot:
        assert await shows(pilot, *LONG_IDS, "spent")
        await pilot.resize_terminal(80, 24)
        assert await wait_for(pilot, lambda: "spent" not in screen_text(app))
        rows = table_lines(screen_text(app))
        for run_id in LONG_IDS:
            assert any(line.split(" ")[0] == run_id for line in rows), screen_text(app)
        await pilot.resize_terminal(120, 30)
        assert await shows(pilot, "spent", "$4.04")


BAR_CELLS = set("█▏▎▍▌▋▊▉░")
REASON = (
    "CUDA out of memory at step 3; fix: per_device_train_batch_size=1 and "
    "gradient_accumulation_steps=16"
)


@pytest.fixture
def sleeper():
    """A live process standing for the training, so a run reads as running."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def monitored_run(root: Path, status: str, pid: int | None) -> str:
    import json
    import socket

    from runner.runs import now_iso

    run_id = LONG_IDS[2]
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    write_state(
        run_dir,
        RunState(
            run_id=run_id,
            status=status,
            pid=pid,
            host=socket.gethostname(),
            started_at=now_iso(),
            segment_started_at=now_iso(),
            ended_at=None if status == "running" else now_iso(),
            step=1840,
            max_steps=6000,
            price_usd_per_h=None if status == "interrupted" else 2.69,
            failure_reason=REASON if status == "failed" else None,
        ),
    )
    with (run_dir / "metrics.jsonl").open("w") as fh:
        for step in range(10, 1841, 10):
            fh.write(json.dumps({"step": step, "loss": 3.0 - step / 1000}) + "\n")
    (run_dir / "train.log").write_text("log line\n")
    return run_id


@pytest.mark.asyncio
@pytest.mark.parametrize("status", ["running", "interrupted", "failed"])
async def test_monitor_header_at_80x24_cuts_nothing(tmp_path: Path, status: str, sleeper) -> None:
    from tui.screens.monitor import header_text

    root = tmp_path / "runs"
    run_id = monitored_run(root, status, sleeper.pid if status == "running" else None)
    app = make_app(FakeNvml([]), root, store=RunStore(root), watch_run=run_id, poll_interval_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        assert await shows(pilot, "step 1,840/6,000")
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.summary is not None)
        header = screen_text(app).splitlines()[0].strip()
        whole = set(header_text(screen.summary, 1000).plain.split())
        assert "…" not in header
        for word in header.split():
            assert word in whole or set(word) <= BAR_CELLS, f"{word!r} cut in {header!r}"
        assert header.split()[:2] == [run_id, status]
        if status == "failed":  # the reason in full, under the header

            def below() -> str:
                return " ".join(" ".join(screen_text(app).splitlines()[1:4]).split())

            assert await wait_for(pilot, lambda: f"failed: {REASON}" in below()), below()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
async def test_host_line_gives_way_whole_phrases(tmp_path: Path, size: tuple[int, int]) -> None:
    app = make_app(FakeNvml([]), tmp_path / "runs", poll_interval_s=3600)
    async with app.run_test(size=size) as pilot:
        assert await shows(pilot, "RAM 412/503 GiB free")
        (line,) = [ln for ln in screen_text(app).splitlines() if ln.startswith(" host ")]
        # The disk figure with what it means; the path only with room for all of it.
        assert "disk 1.2 TiB free" in line, line
        assert "…" not in line
        assert line.rstrip().endswith(("free", "/workspace/runs")), line
