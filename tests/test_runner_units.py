"""Runner pieces without a full training: checkpoint integrity, metrics truncation, redaction,
the demo build, the fit check against a (fake) GPU, refusals and autostart."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runner.checkpoints import (
    HF_INCOMPLETE_MARKER,
    INCOMPLETE_MARKER,
    discard_after,
    inspect_checkpoint,
    latest_complete,
)
from runner.launch import preflight, truncate_metrics
from runner.redact import redact, secret_values
from runner.runs import MetricsTail, RunError, RunState, RunStore, now_iso, read_state, write_state

sys.path.insert(0, str(Path(__file__).parent))
from fake_nvml import FakeGpu, FakeNvml


def make_checkpoint(root: Path, step: int, adapter: bool = True) -> Path:
    """A folder holding what the Trainer writes for a LoRA checkpoint, in the real formats
    (safetensors weights, torch.save archives)."""
    import torch
    from safetensors.torch import save_file

    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    save_file({"lora_A": torch.ones(8, 4), "lora_B": torch.zeros(4, 8)}, folder / weights)
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def _truncate(path: Path, keep_fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])


# ---------------------------------------------------------------- checkpoints


def test_complete_checkpoint_and_each_way_of_being_torn(tmp_path: Path) -> None:
    assert inspect_checkpoint(make_checkpoint(tmp_path, 5)).complete
    assert inspect_checkpoint(make_checkpoint(tmp_path, 6, adapter=False)).complete
    cases = {
        "optimizer.pt": "no optimizer state",
        "scheduler.pt": "no scheduler state",
        "rng_state.pth": "no RNG state",
        "adapter_model.safetensors": "no weights or adapter",
        "trainer_state.json": "trainer_state.json missing or unreadable",
    }
    for step, (missing, problem) in enumerate(cases.items(), start=10):
        folder = make_checkpoint(tmp_path, step)
        (folder / missing).unlink()
        assert problem in inspect_checkpoint(folder).problems
    folder = make_checkpoint(tmp_path, 20)
    (folder / "optimizer.pt").write_bytes(b"")  # created, never written
    assert "optimizer.pt is empty" in inspect_checkpoint(folder).problems
    folder = make_checkpoint(tmp_path, 21)
    (folder / "trainer_state.json").write_text('{"global_st')
    assert not inspect_checkpoint(folder).complete
    folder = make_checkpoint(tmp_path, 22)
    (folder / "trainer_state.json").write_text('{"global_step": 7}')
    assert "trainer_state.json says step 7" in inspect_checkpoint(folder).problems
    for step, marker in ((23, INCOMPLETE_MARKER), (24, HF_INCOMPLETE_MARKER)):
        folder = make_checkpoint(tmp_path, step)
        (folder / marker).write_text("")
        assert f"incomplete marker {marker}" in inspect_checkpoint(folder).problems


def test_truncated_files_make_a_checkpoint_torn(tmp_path: Path) -> None:
    """A file cut short by a hard kill or a full disk is still non-empty: its own header (the
    safetensors length, the zip's central directory) tells."""
    names = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")
    for step, name in enumerate(names, start=30):
        for fraction in (0.5, 0.98):
            folder = make_checkpoint(tmp_path / f"{fraction}", step)
            _truncate(folder / name, fraction)
            problems = inspect_checkpoint(folder).problems
            assert any(name in p and "truncated" in p for p in problems), (name, problems)
    # Sharded weights: a torn shard named by the index.
    folder = make_checkpoint(tmp_path, 40, adapter=False)
    shard = folder / "model-00001-of-00001.safetensors"
    (folder / "model.safetensors").rename(shard)
    index = {"weight_map": {"lora_A": shard.name, "lora_B": shard.name}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert inspect_checkpoint(folder).complete
    _truncate(shard)
    assert not inspect_checkpoint(folder).complete
    # The resume point falls back past the torn newest checkpoint.
    root = tmp_path / "fallback"
    make_checkpoint(root, 10)
    _truncate(make_checkpoint(root, 20) / "optimizer.pt")
    keep = latest_complete(root)
    assert keep is not None and keep.step == 10


def test_resume_point_skips_torn_ones_and_they_are_discarded(tmp_path: Path) -> None:
    assert latest_complete(tmp_path / "none") is None
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    torn = make_checkpoint(tmp_path, 30)
    (torn / INCOMPLETE_MARKER).write_text("")
    half = tmp_path / "checkpoint-40"
    half.mkdir()
    (half / INCOMPLETE_MARKER).write_text("")
    keep = latest_complete(tmp_path)
    assert keep is not None and keep.step == 20
    removed = discard_after(tmp_path, keep)
    assert sorted(r.step for r in removed) == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20"]


# ---------------------------------------------------------------- metrics


def test_truncate_metrics_keeps_each_step_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 11)]
    lines.insert(5, json.dumps({"step": 5, "eval_loss": 0.5}))
    path.write_text("\n".join(lines) + "\n" + '{"step": 11, "lo')  # torn by a kill
    tail = MetricsTail(path)
    assert len(tail.read_new()) == 11
    dropped = truncate_metrics(path, last_step=6)
    assert dropped == 5  # steps 7-10 and the torn line
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 5, 6]
    again = tail.read_new()
    assert tail.was_reset and [r["step"] for r in again] == steps
    assert truncate_metrics(tmp_path / "missing.jsonl", 3) == 0


def test_a_damaged_line_in_the_middle_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 11)]
    lines.insert(3, "\x00\x00garbage{")
    lines.insert(6, json.dumps({"step": "seven", "loss": 1.0}))  # not a step
    lines.insert(8, json.dumps(["not", "a", "record"]))
    path.write_text("\n".join(lines) + "\n")
    assert truncate_metrics(path, last_step=8) == 5  # the three bad lines, steps 9 and 10
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


def test_records_with_odd_steps_do_not_break_readers(tmp_path: Path) -> None:
    from runner.runs import record_step, summarize

    assert [record_step({"step": v}) for v in (3, 3.0, "3", None, True, -1, 2.5)] == [
        3,
        3,
        None,
        None,
        None,
        None,
        None,
    ]
    run_dir = tmp_path / "odd"
    run_dir.mkdir()
    records = [{"step": "x", "loss": 1.0, "wall_time": "soon"}, {"step": 2, "loss": 0.5}]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    state = RunState(run_id="odd", status="completed", step=2, max_steps=2)
    assert summarize(run_dir, state).last_loss == 0.5


def test_eta_follows_the_measured_step_time(tmp_path: Path) -> None:
    """Two slow warm-up steps, then one step a second: the ETA is paced by the steady steps,
    not by the average since the segment began."""
    from runner.runs import measured_step_s, summarize

    run_dir = tmp_path / "eta"
    run_dir.mkdir()
    start_s = 1_000_000.0
    walls = [start_s + 30, start_s + 60] + [start_s + 60 + i for i in range(1, 21)]
    records = [{"step": i + 1, "loss": 1.0, "wall_time": w} for i, w in enumerate(walls)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert measured_step_s(records, start_s) == pytest.approx(1.0)
    assert measured_step_s(records[:3], start_s) is None  # not enough after the warm-up
    # Records of an earlier segment do not pace this one.
    assert measured_step_s(records, start_s + 10_000) is None
    state = RunState(
        run_id="eta",
        status="running",
        step=22,
        max_steps=122,
        host=socket.gethostname(),
        pid=os.getpid(),
        segment_started_at=datetime.fromtimestamp(start_s, timezone.utc).isoformat(),
    )
    summary = summarize(run_dir, state, now_s=start_s + 81)
    assert summary.eta_s == pytest.approx(100.0)


def test_liveness_without_a_lock_uses_start_ticks_not_the_clock(tmp_path: Path) -> None:
    """A run folder without a lock file (written before locks existed): the pid's start in
    clock ticks since boot decides, which a stepped wall clock cannot move."""
    from runner.runs import process_alive, process_start_ticks

    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    me = RunState(
        run_id="me",
        host=socket.gethostname(),
        pid=os.getpid(),
        pid_create_time=1.0,  # what a wall clock stepped by decades would make of it
        pid_start_ticks=ticks,
    )
    assert process_alive(me, tmp_path) is True
    reused = me.model_copy(update={"pid_start_ticks": ticks + 1})
    assert process_alive(reused, tmp_path) is False


# ---------------------------------------------------------------- secrets


def test_secret_values_and_redaction() -> None:
    env = {
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0123456789",
        "WANDB_API_KEY": "0123456789abcdef",
        "MY_PASSWORD": "short",  # too short to blank everywhere
        "PATH": "/usr/bin:/bin",
    }
    secrets = secret_values(env)
    assert set(secrets) == {env["HF_TOKEN"], env["WANDB_API_KEY"]}
    text = f"token={env['HF_TOKEN']} key {env['WANDB_API_KEY']} other hf_{'x' * 34}"
    assert redact(text, secrets) == "token=<redacted> key <redacted> other <redacted>"


def test_training_output_is_redacted_at_the_file_descriptor(tmp_path: Path) -> None:
    """What a library prints (Python or C level, stdout or stderr) reaches train.log
    without the token."""
    secret = "hf_" + "Q" * 36
    log = tmp_path / "train.log"
    code = (
        "import os, sys\n"
        "from runner.train import RedactedOutput\n"
        f"out = RedactedOutput([{secret!r}])\n"
        f"print('python stdout', {secret!r})\n"
        f"print('python stderr', {secret!r}, file=sys.stderr)\n"
        f"os.write(2, b'C-level ' + {secret!r}.encode() + b' no newline')\n"
        "out.close()\n"
        "print('after close')\n"
    )
    with log.open("wb") as fh:
        out = subprocess.run(
            [sys.executable, "-c", code], stdout=fh, stderr=subprocess.STDOUT, timeout=120
        )
    assert out.returncode == 0
    text = log.read_text()
    assert secret not in text
    assert text.count("<redacted>") == 3
    assert "python stdout" in text and "C-level" in text and "after close" in text


# ---------------------------------------------------------------- demo


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_demo_build_is_byte_identical_every_time(tmp_path: Path, demo_dir: Path) -> None:
    env = {**os.environ, "TUNEDECK_HOME": str(tmp_path)}
    code = "from runner.demo import ensure_demo; print(ensure_demo())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    again = Path(out.stdout.strip().splitlines()[-1])
    assert again != demo_dir
    assert _hashes(again) == _hashes(demo_dir)
    assert {"model/model.safetensors", "chat.jsonl", "chat_eval.jsonl", "prefs.jsonl"} <= set(
        _hashes(again)
    )
    rows = [json.loads(line) for line in (again / "chat.jsonl").read_text().splitlines()]
    questions = [r["messages"][-2]["content"] for r in rows]
    assert len(set(questions)) == len(questions)  # no duplicate rows


# ---------------------------------------------------------------- fit check and refusals


def fake_gpu(total_gib: float) -> Any:
    from runner.gpu import GpuSource

    return GpuSource(nvml=FakeNvml([FakeGpu("NVIDIA GeForce RTX 4090", total_gib=total_gib)]))


def test_fit_check_uses_the_planner_on_the_detected_gpu(demo_home: Path) -> None:
    from presets.store import load_preset

    # A card the planner refuses (0 GiB) is a warning and no verdict, not a crash.
    odd = preflight(load_preset("demo"), check_data=False, gpu_source=fake_gpu(0))
    assert odd.fit_check == "not checked" and odd.warnings[0].startswith("plan: ")
    small = preflight(load_preset("demo"), check_data=False, gpu_source=fake_gpu(0.25))
    assert small.fit_check == "does not fit" and small.fit_problem
    assert small.planned_device_peak_gib and small.planned_device_peak_gib > 0.25
    big = preflight(load_preset("demo"), check_data=False, gpu_source=fake_gpu(24))
    assert big.fit_check == "fits" and big.fit_problem is None
    full = preflight(load_preset("full-llama3.2-1b"), check_data=False, gpu_source=fake_gpu(8))
    assert full.fit_check == "does not fit" and "GiB" in (full.fit_problem or "")


def test_a_plan_that_cannot_fit_is_refused_unless_forced(demo_home: Path) -> None:
    from presets.store import load_preset
    from runner.launch import launch, stop, wait_until_gone

    root = demo_home / "runs"
    preset = load_preset("demo")
    with pytest.raises(RunError) as err:
        launch(root, preset, name="nofit", gpu_source=fake_gpu(0.25))
    assert any("does not fit" in line or "needs about" in line for line in err.value.lines)
    assert any("--force" in line for line in err.value.lines)
    assert not (root / "nofit").exists()

    result = launch(root, preset, name="forced", force=True, gpu_source=fake_gpu(0.25))
    assert any("--force" in w for w in result.warnings)
    state = read_state(result.run_dir)
    assert state is not None and state.fit_check == "does not fit: forced"
    stop(result.run_dir, now=True)
    assert wait_until_gone(state.model_copy(update={"pid": result.pid}), timeout_s=10)
    after = RunStore(root).get("forced")
    assert after.state.status == "interrupted" and after.state.stopped_by_user


def test_stopping_a_run_whose_process_is_gone(tmp_path: Path) -> None:
    from runner.launch import stop

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run_dir = tmp_path / "gone"
    run_dir.mkdir()
    write_state(
        run_dir,
        RunState(run_id="gone", status="running", pid=proc.pid, pgid=proc.pid,
                 host=socket.gethostname(), started_at=now_iso()),
    )  # fmt: skip
    with pytest.raises(RunError) as err:
        stop(run_dir)
    assert "not running (it is interrupted)" in err.value.lines[0]


def test_resume_all_interrupted_takes_only_auto_resume_runs(
    tunedeck_home: Path, tunedeck: Any
) -> None:
    root = tunedeck_home / "runs"
    for run_id, auto, by_user in (("auto", True, False), ("manual", False, False),
                                  ("stopped", True, True)):  # fmt: skip
        run_dir = root / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("name: [broken\n")
        write_state(
            run_dir,
            RunState(run_id=run_id, status="interrupted", auto_resume=auto,
                     stopped_by_user=by_user, started_at=now_iso()),
        )  # fmt: skip
    out = tunedeck("resume", "--all-interrupted", "--json")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["resumed"] == []
    assert data["problems"] and all(p.startswith("auto: ") for p in data["problems"])


def test_autostart_prints_a_unit_and_a_cron_line(tunedeck_home: Path, tunedeck: Any) -> None:
    unit = tunedeck("autostart")
    assert unit.returncode == 0
    root = tunedeck_home / "runs"
    assert f"resume --all-interrupted --runs-dir {root}" in unit.stdout
    assert "[Service]" in unit.stdout and "KillMode=process" in unit.stdout
    cron = tunedeck("autostart", "--cron")
    assert cron.returncode == 0 and cron.stdout.count("@reboot") == 1
    assert "resume --all-interrupted" in cron.stdout


@pytest.mark.slow
def test_a_failing_run_records_why(demo_home: Path, tunedeck: Any, tmp_path: Path) -> None:
    """An architecture this transformers does not know: preflight sees a whole model folder,
    the training cannot load it. (Missing weights are refused before launch.)"""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(demo_home / "data" / "demo" / "model", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    out = tunedeck("demo", "--name", "broken", "--json", "--set", f"model={model}")
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = read_state(run_dir)
        if state is not None and state.status == "failed":
            break
        time.sleep(0.2)
    assert state is not None and state.status == "failed", state
    assert state.exit_code == 1
    assert state.failure_reason and str(model) in state.failure_reason
    listed = tunedeck("runs")
    assert "failed" in listed.stdout


def test_out_of_memory_is_recognised() -> None:
    code = (
        "import torch\n"
        "from runner.train import _oom\n"
        "print(_oom(torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')),\n"
        "      _oom(RuntimeError('CUDA out of memory. Tried to allocate')),\n"
        "      _oom(ValueError('bad value')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


def test_resume_refuses_when_the_data_is_gone(demo_home: Path, tmp_path: Path) -> None:
    from presets.store import load_preset, preset_to_yaml
    from runner.launch import resume

    gone = tmp_path / "gone.jsonl"
    run_dir = demo_home / "runs" / "lost"
    run_dir.mkdir(parents=True)
    preset = load_preset("demo", [f"dataset.path={gone}"])
    (run_dir / "config.yaml").write_text(preset_to_yaml(preset))
    write_state(run_dir, RunState(run_id="lost", status="interrupted", started_at=now_iso()))
    with pytest.raises(RunError) as err:
        resume(run_dir)
    assert err.value.lines == [f"dataset: {gone}: no longer there (was the volume mounted?)"]
    state = read_state(run_dir)
    assert state is not None and state.status == "interrupted" and state.resumes == 0
