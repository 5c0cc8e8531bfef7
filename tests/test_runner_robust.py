"""Races and damage, tried on real runs of the demo model: one trainer per run whatever races,
liveness that no clock can fool, stops that stop (from the first instant, on a read-only folder,
for a deleted folder), nothing trained past the end, damaged files read back with a fallback,
money counted over killed segments, and a merge that never deletes what it did not write."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import run_lock
from runner.checkpoints import latest_complete
from runner.runs import RunStore, read_metrics, read_state, summarize, write_state

sys.path.insert(0, str(Path(__file__).parent))
from test_runner_e2e import finished, launch_json, logged_step, wait_for

pytestmark = pytest.mark.slow

# A run that trains until it is stopped (the demo model does about 20-100 steps a second).
ENDLESS = [
    "--set",
    "training.max_steps=200000",
    "--set",
    "training.save_steps=5",
    "--set",
    "training.eval_steps=100000",
    "--set",
    "training.max_length=64",
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


def _gone(pid: int, timeout_s: float = 120) -> None:
    wait_for(lambda: not _alive(pid), timeout_s, f"process {pid} to end", poll_s=0.1)


def _trainers_of(run_dir: Path) -> list[int]:
    """Pids of training processes started for this run folder (`python -m runner.train DIR`)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "runner.train" in cmd and str(run_dir) in cmd:
            found.append(proc.pid)
    return found


@pytest.fixture
def endless_run(demo_home: Path, tunedeck: Any) -> Iterator[Path]:
    run_dir = launch_json(tunedeck, "demo", "--name", "endless", *ENDLESS)
    wait_for(lambda: latest_complete(run_dir / "checkpoints"), 180, "a first checkpoint")
    yield run_dir
    state = read_state(run_dir)
    for pid in _trainers_of(run_dir) + ([state.pgid] if state and state.pgid else []):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------- one trainer per run


def test_two_resumes_at_the_same_moment_start_one_trainer(endless_run: Path, tunedeck: Any) -> None:
    run_dir = endless_run
    state = read_state(run_dir)
    assert state and state.pgid
    os.killpg(state.pgid, signal.SIGKILL)
    _gone(state.pgid)
    env = {**os.environ, "COLUMNS": "120"}
    command = [sys.executable, "-m", "tui.cli", "resume", "endless", "--json"]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes.count(0) == 1, (codes, [o[1][-500:] for o in outs])
    refused = [err.decode() for (_, err), code in zip(outs, codes, strict=True) if code != 0]
    assert all("running" in text and "Traceback" not in text for text in refused), refused
    wait_for(lambda: logged_step(run_dir) > (state.step or 0) + 3, 180, "the resumed run")
    assert len(_trainers_of(run_dir)) == 1
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(steps) == len(set(steps)), "a step logged twice"


def test_a_trainer_started_by_hand_leaves_a_locked_run_alone(endless_run: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runner.train", str(endless_run)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "another trainer holds this run" in out.stdout
    state = read_state(endless_run)
    assert state is not None and state.status == "running"


def test_liveness_does_not_trust_the_wall_clock(endless_run: Path, tunedeck: Any) -> None:
    """A stepped wall clock moves psutil's process start time; the lock does not care."""
    state = read_state(endless_run)
    assert state and state.pid_create_time
    stepped = state.model_copy(
        update={"pid_create_time": state.pid_create_time - 3600, "pid_start_ticks": None}
    )
    assert RunStore(endless_run.parent).get(endless_run).state.status == "running"
    assert summarize(endless_run, stepped).state.status == "running"
    write_state(endless_run, stepped)
    out = tunedeck("resume", "endless")
    assert out.returncode != 0 and "running" in out.stderr
    assert len(_trainers_of(endless_run)) == 1


# ---------------------------------------------------------------- stops that stop


def test_a_stop_in_the_first_instant_is_honoured(demo_home: Path, tunedeck: Any) -> None:
    from presets.store import load_preset
    from runner.launch import launch

    root = demo_home / "runs"
    preset = load_preset("demo", ["training.max_steps=200000"])
    result = launch(root, preset, name="early")
    assert result.pid is not None
    # SIGTERM at once: the child is still starting Python, long before any handler could run.
    os.killpg(result.pid, signal.SIGTERM)
    _gone(result.pid)
    state = read_state(result.run_dir)
    assert state is not None and state.status == "interrupted", state
    assert state.step == 0 and logged_step(result.run_dir) == 0
    # Stopped by `tunedeck stop` in its first instant: autostart must leave it alone.
    result = launch(root, preset, name="early2", auto_resume=True)
    out = tunedeck("stop", "early2")
    assert out.returncode == 0, out.stderr
    state = read_state(result.run_dir)
    assert state is not None and state.status == "interrupted" and state.stopped_by_user
    out = tunedeck("resume", "--all-interrupted", "--json")
    assert json.loads(out.stdout)["resumed"] == [], out.stdout


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[Any]:
    made: list[Path] = []

    def view(folder: Path) -> Path:
        target = tmp_path / f"ro-{len(made)}"
        target.mkdir()
        try:
            subprocess.run(["mount", "--bind", str(folder), str(target)], check=True)
            subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        except (OSError, subprocess.CalledProcessError):
            pytest.skip("no read-only bind mount on this machine (needs root)")
        made.append(target)
        return target

    yield view
    for target in made:
        subprocess.run(["umount", str(target)], check=False)


def test_stop_on_a_read_only_runs_folder_still_stops(
    endless_run: Path, tunedeck: Any, read_only_view: Any
) -> None:
    view = read_only_view(endless_run.parent)
    state = read_state(endless_run)
    assert state and state.pgid
    out = tunedeck("stop", "endless", "--runs-dir", str(view))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "cannot record the stop" in out.stderr
    _gone(state.pgid)
    # The trainer itself could write (its folder is not read-only): a checkpoint, then stopped.
    final = read_state(endless_run)
    assert final is not None and final.status == "interrupted"


def test_stop_now_on_a_read_only_runs_folder_kills(
    endless_run: Path, tunedeck: Any, read_only_view: Any
) -> None:
    view = read_only_view(endless_run.parent)
    state = read_state(endless_run)
    assert state and state.pgid
    out = tunedeck("stop", "endless", "--now", "--runs-dir", str(view))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    _gone(state.pgid, timeout_s=30)
    listed = tunedeck("runs", "--json", "--runs-dir", str(view))
    assert json.loads(listed.stdout)["runs"][0]["status"] == "interrupted"


def test_deleting_a_running_runs_folder_ends_its_trainer(endless_run: Path) -> None:
    state = read_state(endless_run)
    assert state and state.pgid
    shutil.rmtree(endless_run)
    _gone(state.pgid)
    assert not endless_run.exists(), "the trainer made the deleted folder again"


# ---------------------------------------------------------------- the end is the end


def test_resume_at_the_last_step_completes_without_training(demo_home: Path, tunedeck: Any) -> None:
    """What a kill right after the last checkpoint leaves: that checkpoint, no final model, a
    state that says running. The resume must complete from it, not train a step more."""
    steps = ["--set", "training.max_steps=10", "--set", "training.save_steps=5"]
    run_dir = launch_json(tunedeck, "demo", "--name", "end", *steps)
    wait_for(lambda: finished(run_dir), 240, "the run to finish", poll_s=0.2)
    wait_for(lambda: run_lock.is_held(run_dir) is False, 60, "the trainer to exit")
    state = read_state(run_dir)
    assert state and state.status == "completed", state
    final = (run_dir / "output" / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(run_dir / "output")
    write_state(run_dir, state.model_copy(update={"status": "running", "ended_at": None}))
    before = [r for r in read_metrics(run_dir / "metrics.jsonl")]
    out = tunedeck("resume", "end", "--json")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: finished(run_dir), 240, "the resumed run", poll_s=0.2)
    state = read_state(run_dir)
    assert state and state.status == "completed" and state.step == 10, state
    assert read_metrics(run_dir / "metrics.jsonl") == before, "it trained again"
    assert (run_dir / "output" / "adapter_model.safetensors").read_bytes() == final


# ---------------------------------------------------------------- damage


def test_a_damaged_state_json_is_listed_and_resumable(endless_run: Path, tunedeck: Any) -> None:
    state = read_state(endless_run)
    assert state and state.pgid
    os.killpg(state.pgid, signal.SIGKILL)
    _gone(state.pgid)
    (endless_run / "state.json").write_text('{"run_id": "endless", "step": "twelve"')
    out = tunedeck("runs", "--json")
    assert out.returncode == 0, out.stderr
    (listed,) = json.loads(out.stdout)["runs"]
    assert listed["status"] == "interrupted"
    assert "state.json is damaged" in listed["state"]["failure_reason"]
    out = tunedeck("resume", "endless")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: (s := read_state(endless_run)) and s.step > 5, 180, "the resumed run")


def test_full_disk_fails_the_run_with_the_reason(
    demo_home: Path, demo_dir: Path, tmp_path: Path
) -> None:
    """The runs folder on a small filesystem that fills up while the run trains: the run ends
    failed, saying the disk is full, instead of staying `running`."""
    from presets.store import load_preset
    from runner.launch import launch

    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        preset = load_preset("demo", ["training.max_steps=200000", "training.save_steps=5"])
        result = launch(mount / "runs", preset, name="full")
        wait_for(lambda: latest_complete(result.run_dir / "checkpoints"), 180, "a checkpoint")
        with contextlib.suppress(OSError), (mount / "filler").open("wb") as fh:
            while True:
                fh.write(b"\0" * (1 << 20))
        assert result.pid is not None
        _gone(result.pid)
        state = read_state(result.run_dir)
        log = (
            (result.run_dir / "train.log").read_text(errors="replace")[-6000:].replace("\n", " | ")
        )
        assert state is not None and state.status == "failed", log
        assert state.failure_reason and "disk full" in state.failure_reason
    finally:
        if "result" in locals() and result.pid and _alive(result.pid):
            os.killpg(result.pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ---------------------------------------------------------------- money and merge


def test_killed_segments_count_in_time_and_money(demo_home: Path, tunedeck: Any) -> None:
    run_dir = launch_json(
        tunedeck, "demo", "--name", "paid", *ENDLESS, "--set", "price_usd_per_h=3600"
    )
    wait_for(lambda: logged_step(run_dir) >= 10, 180, "some training")
    time.sleep(1.5)  # let a heartbeat record the time trained so far
    state = read_state(run_dir)
    assert state and state.pgid
    os.killpg(state.pgid, signal.SIGKILL)
    _gone(state.pgid)
    store = RunStore(run_dir.parent)
    before = store.get("paid")
    assert before.cost_usd and before.cost_usd > 1.0  # a dollar a second
    out = tunedeck("resume", "paid")
    assert out.returncode == 0, out.stderr
    after = store.get("paid")
    assert after.cost_usd is not None and after.cost_usd >= before.cost_usd - 1e-6
    stop = tunedeck("stop", "paid", "--now")
    assert stop.returncode == 0, stop.stderr


def test_merge_never_deletes_what_it_did_not_write(demo_home: Path, tunedeck: Any) -> None:
    steps = ["--set", "training.max_steps=4", "--set", "training.save_steps=2"]
    run_dir = launch_json(tunedeck, "demo", "--name", "m", *steps)
    wait_for(lambda: finished(run_dir), 240, "the run to finish", poll_s=0.2)
    mine = demo_home / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    out = tunedeck("merge", "m", "--out", str(mine))
    assert out.returncode != 0 and "not empty" in out.stderr, out.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    a_file = demo_home / "a-file"
    a_file.write_text("keep me too")
    out = tunedeck("merge", "m", "--out", str(a_file))
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert a_file.read_text() == "keep me too"
    assert [p.name for p in demo_home.iterdir() if p.name.startswith(".")] == []
    out = tunedeck("merge", "m", "--out", str(demo_home / "merged"))
    assert out.returncode == 0, out.stderr
    assert (demo_home / "merged" / "config.json").is_file()
    again = tunedeck("merge", "m", "--out", str(demo_home / "merged"))
    assert again.returncode != 0 and "not empty" in again.stderr
    assert run_lock.is_held(run_dir) is False
