"""What `stop --now` and a resume say, over real demo runs: a run with no complete checkpoint is
said to start again from step 0, one with a checkpoint to continue from that checkpoint's step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import FakeNvml
from test_tui_helpers import make_app, shows, wait_for

from presets import load_preset
from presets.store import preset_to_yaml
from runner.checkpoints import latest_complete
from runner.runs import RunState, RunStore, now_iso, read_state, write_state

pytestmark = pytest.mark.slow

# Long enough to be killed while training; checkpoints only where a test asks for them.
LONG = ["training.max_steps=3000", "training.eval_steps=1000"]


def poll(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def start_demo(tunedeck: Any, runs: Path, save_steps: int) -> Path:
    args = [f"--set={item}" for item in [*LONG, f"training.save_steps={save_steps}"]]
    out = tunedeck("demo", "--json", "--runs-dir", str(runs), *args)
    assert out.returncode == 0, out.stderr
    return Path(json.loads(out.stdout)["run_dir"])


def notified(app: Any) -> str:
    """Every notification the app has shown (a toast wraps its text, so the screen cannot be
    searched for a whole sentence)."""
    return "\n".join(n.message for n in app._notifications)


def stop_all(runs: Path) -> None:
    store = RunStore(runs)
    for summary in store.list():
        if summary.state.status in ("running", "stopping"):
            store.stop(summary.run_id, now=True)


def test_stop_now_and_resume_without_a_checkpoint_say_step_0(
    demo_home: Path, tunedeck: Any, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    try:
        run_dir = start_demo(tunedeck, runs, save_steps=1000)
        run_id = run_dir.name
        poll(lambda: (read_state(run_dir).step or 0) >= 2, 120, "two steps")
        out = tunedeck("stop", run_id, "--now", "--runs-dir", str(runs))
        assert out.returncode == 0, out.stderr
        assert latest_complete(run_dir / "checkpoints") is None
        said = " ".join(out.stdout.split())
        assert "last checkpoint" not in said
        assert f"it has no complete checkpoint, so `tunedeck resume {run_id}` starts" in said
        assert "again from step 0" in said

        out = tunedeck("resume", run_id, "--runs-dir", str(runs))
        assert out.returncode == 0, out.stderr
        assert f"restarted {run_id} from step 0: no checkpoint" in out.stdout
        assert f"resumed {run_id}" not in out.stdout
    finally:
        stop_all(runs)


def test_stop_now_and_resume_with_a_checkpoint_name_its_step(
    demo_home: Path, tunedeck: Any, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    try:
        run_dir = start_demo(tunedeck, runs, save_steps=3)
        run_id = run_dir.name
        poll(lambda: latest_complete(run_dir / "checkpoints"), 120, "a complete checkpoint")
        out = tunedeck("stop", run_id, "--now", "--runs-dir", str(runs))
        assert out.returncode == 0, out.stderr
        kept = latest_complete(run_dir / "checkpoints")
        assert kept is not None
        said = " ".join(out.stdout.split())
        assert (
            f"`tunedeck resume {run_id}` continues from step {kept.step} "
            f"(checkpoint-{kept.step}, its newest complete checkpoint)"
        ) in said

        out = tunedeck("resume", run_id, "--runs-dir", str(runs))
        assert out.returncode == 0, out.stderr
        assert f"resumed {run_id} from step {kept.step} (checkpoint-{kept.step})" in out.stdout
    finally:
        stop_all(runs)


@pytest.mark.asyncio
async def test_r_on_a_failed_run_without_a_checkpoint_says_restarted(demo_home: Path) -> None:
    root = demo_home / "runs"
    run_dir = root / "demo-failed-early"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        preset_to_yaml(load_preset("demo", ["training.max_steps=3000"]))
    )
    write_state(
        run_dir,
        RunState(
            run_id=run_dir.name,
            status="failed",
            failure_reason="exit code 1",
            started_at=now_iso(),
            ended_at=now_iso(),
            step=3,
            max_steps=3000,
        ),
    )
    store = RunStore(root)
    app = make_app(FakeNvml([]), root, store=store)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            assert await shows(pilot, "demo-failed-early", "failed")
            await pilot.press("r")
            said = "restarted demo-failed-early from step 0: no checkpoint"
            assert await wait_for(pilot, lambda: said in notified(app), timeout_s=30), notified(app)
            assert "resumed" not in notified(app)
            assert await wait_for(pilot, lambda: read_state(run_dir).resumes == 1)
    finally:
        stop_all(root)
