"""Real runs of the demo model through the `tunedeck` command: detached launch surviving a hang-up,
SIGTERM and SIGKILL (also mid-checkpoint) with exact resume, torchrun, DPO, merge.

Every run uses the same settings and seed, so each interrupted-and-resumed run must reproduce the
loss of the uninterrupted reference run at every step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import random
import signal
import stat
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner.checkpoints import INCOMPLETE_MARKER, inspect_checkpoint, latest_complete
from runner.runs import read_metrics, read_state

pytestmark = pytest.mark.slow

STEPS = 40
COMMON = [
    f"training.max_steps={STEPS}",
    "training.save_steps=5",
    "training.eval_steps=20",
    "training.logging_steps=1",
    "training.save_total_limit=3",
    "training.max_length=64",
]
SECRET = "hf_" + "TestTokenNotReal0123456789abcdefXYZ"


def set_args(extra: list[str] | None = None) -> list[str]:
    out: list[str] = []
    for item in COMMON + (extra or []):
        out += ["--set", item]
    return out


def wait_for(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def step_of(run_dir: Path) -> int:
    """The step in state.json (a heartbeat: up to a second behind)."""
    state = read_state(run_dir)
    return state.step if state else 0


def logged_step(run_dir: Path) -> int:
    """The newest step in metrics.jsonl (written every step, unlike the state's heartbeat)."""
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    return max(steps, default=0)


def finished(run_dir: Path) -> bool:
    state = read_state(run_dir)
    return state is not None and state.status in ("completed", "failed", "interrupted")


def losses(run_dir: Path) -> dict[int, float]:
    """Train loss per step; fails if any step appears twice."""
    out: dict[int, float] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if "loss" in record:
            assert record["step"] not in out, f"step {record['step']} logged twice"
            out[record["step"]] = record["loss"]
    return out


def assert_same_losses(run_dir: Path, reference: dict[int, float], from_step: int = 1) -> None:
    got = losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1)), "every step exactly once"
    diffs = {s: abs(got[s] - reference[s]) for s in range(from_step, STEPS + 1)}
    worst = max(diffs, key=lambda s: diffs[s])
    assert diffs[worst] <= 1e-6, f"step {worst}: {got[worst]} vs reference {reference[worst]}"


def launch_json(tunedeck: Any, *args: str, env: dict[str, str] | None = None) -> Path:
    out = tunedeck(*args, "--json", env=env)
    assert out.returncode == 0, out.stderr
    return Path(json.loads(out.stdout)["run_dir"])


def all_text(run_dir: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in run_dir.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the reference run


@dataclass
class Reference:
    run_dir: Path
    home: Path
    losses: dict[int, float]
    launch_s: float
    session_procs_left: int


def _shell_in_pty(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """An interactive bash with a pty as its controlling terminal, like an SSH login."""
    master, slave = pty.openpty()

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-i"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=own_terminal,
        env=env,
    )
    os.close(slave)
    return shell, master


class TerminalReader(threading.Thread):
    """Keeps reading the terminal's output, as an SSH client would, and keeps it for errors."""

    def __init__(self, master: int):
        super().__init__(daemon=True)
        self.master = master
        self.output = b""

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Reference:
    """The uninterrupted run every other run is compared with. It is launched from an
    interactive shell on a pseudo-terminal whose whole session is then hung up (SIGHUP), as
    when an SSH connection drops, and must still complete."""
    home = tmp_path_factory.mktemp("reference-home")
    (home / "data").mkdir()
    (home / "data" / "demo").symlink_to(demo_dir, target_is_directory=True)
    env = {**os.environ, "TUNEDECK_HOME": str(home), "HF_TOKEN": SECRET}
    env.pop("TUNEDECK_RUNS", None)
    shell, master = _shell_in_pty(env)
    reader = TerminalReader(master)
    reader.start()
    out_file = home / "launch.json"
    command = [sys.executable, "-m", "tui.cli", "demo", "--name", "ref", "--json"]
    command += set_args([f"training.run_name={SECRET}"])
    line = " ".join(f"'{c}'" for c in command) + f" > {out_file}\n"
    started = time.monotonic()
    os.write(master, line.encode())
    run_dir = home / "runs" / "ref"
    try:
        wait_for(
            lambda: out_file.is_file() and out_file.read_text().strip().endswith("}"), 120, "launch"
        )
    except AssertionError:
        raise AssertionError(reader.output.decode(errors="replace")[-3000:]) from None
    launch_s = time.monotonic() - started
    wait_for(lambda: logged_step(run_dir) >= 1 or finished(run_dir), 120, "the first step")
    assert not finished(run_dir), "the run should still be training when the session drops"
    # Hang up the terminal's whole session, then close the terminal.
    import psutil

    in_session = [p for p in psutil.process_iter() if _sid(p.pid) == shell.pid]
    for proc in in_session:
        with contextlib.suppress(ProcessLookupError):  # it may have left already
            os.kill(proc.pid, signal.SIGHUP)
    os.close(master)
    shell.wait(timeout=30)
    left = sum(1 for p in psutil.process_iter() if _sid(p.pid) == shell.pid)
    wait_for(lambda: finished(run_dir), 240, "the run to finish", poll_s=0.2)
    return Reference(run_dir, home, losses(run_dir), launch_s, left)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_run_survives_the_launching_sessions_hangup(reference: Reference) -> None:
    state = read_state(reference.run_dir)
    assert state is not None
    assert state.status == "completed", (reference.run_dir / "train.log").read_text()[-2000:]
    assert reference.session_procs_left == 0  # the shell's session is gone entirely
    assert reference.launch_s < 60  # `tunedeck demo` returned without waiting for the run
    assert state.step == STEPS and state.exit_code == 0
    assert state.fit_check == "no GPU: not checked"
    assert sorted(reference.losses) == list(range(1, STEPS + 1))
    assert (reference.run_dir / "output" / "adapter_model.safetensors").is_file()


def test_run_folder_is_private_and_holds_no_token(reference: Reference) -> None:
    run_dir = reference.run_dir
    for path in [run_dir, *run_dir.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    assert SECRET not in all_text(run_dir)
    assert "<redacted>" in (run_dir / "config.yaml").read_text()


def test_runs_lists_it_as_json(reference: Reference, tunedeck: Any) -> None:
    out = tunedeck("runs", "--json", env={"TUNEDECK_HOME": str(reference.home)})
    assert out.returncode == 0, out.stderr
    (run,) = json.loads(out.stdout)["runs"]
    assert run["run_id"] == "ref" and run["status"] == "completed"
    assert run["step"] == run["max_steps"] == STEPS
    assert run["last_loss"] == reference.losses[STEPS]
    log = tunedeck("logs", "ref", "-n", "3", env={"TUNEDECK_HOME": str(reference.home)})
    assert log.returncode == 0 and f"completed at step {STEPS}" in log.stdout
    assert len(log.stdout.splitlines()) == 3
    followed = tunedeck("logs", "ref", "-f", env={"TUNEDECK_HOME": str(reference.home)})
    assert followed.returncode == 0  # a finished run: -f prints the end and returns


# ---------------------------------------------------------------- SIGTERM and resume


def test_sigterm_checkpoints_and_resume_is_exact(
    reference: Reference, demo_home: Path, tunedeck: Any
) -> None:
    run_dir = launch_json(tunedeck, "demo", "--name", "cut", *set_args())
    refused = tunedeck("resume", "cut")  # while it loads: a second process must not start
    assert refused.returncode == 2 and "still running" in refused.stderr
    assert "Traceback" not in refused.stderr
    stop_at = random.Random().randint(6, 30)
    wait_for(lambda: logged_step(run_dir) >= stop_at, 120, f"step {stop_at}", poll_s=0.005)
    state = read_state(run_dir)
    assert state is not None and state.pgid
    os.killpg(state.pgid, signal.SIGTERM)
    wait_for(lambda: finished(run_dir), 120, "the checkpoint and stop")
    state = read_state(run_dir)
    assert state is not None and state.status == "interrupted", state
    stopped = state.step
    assert stopped >= stop_at
    info = inspect_checkpoint(run_dir / "checkpoints" / f"checkpoint-{stopped}")
    assert info.complete, info.problems
    assert max(losses(run_dir)) == stopped

    out = tunedeck("resume", "cut")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: finished(run_dir), 180, "the resumed run")
    state = read_state(run_dir)
    assert state is not None and state.status == "completed" and state.resumes == 1
    assert state.resumed_from and state.resumed_from.endswith(f"checkpoint-{stopped}")
    assert_same_losses(run_dir, reference.losses)
    evals = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r]
    assert evals == [20, 40]


# ---------------------------------------------------------------- SIGKILL


def kill_mid_checkpoint(run_dir: Path, pgid: int, timeout_s: float = 120) -> Path | None:
    """SIGKILL the group while a checkpoint is being written: its incomplete marker is there
    and the trainer has begun writing files next to it."""
    ckpt_dir = run_dir / "checkpoints"
    # Wait for one complete checkpoint to exist, so there is one to fall back to.
    before = wait_for(lambda: latest_complete(ckpt_dir), timeout_s, "a complete checkpoint", 0.005)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not finished(run_dir):
        for folder in ckpt_dir.glob("checkpoint-*"):
            if int(folder.name.rsplit("-", 1)[1]) <= before.step:
                continue
            try:
                names = {p.name for p in folder.iterdir()}
            except FileNotFoundError:
                continue
            if INCOMPLETE_MARKER in names and len(names) > 1:
                os.killpg(pgid, signal.SIGKILL)
                return folder
        time.sleep(0.0005)
    return None


def test_sigkill_anywhere_resumes_from_last_complete_checkpoint(
    reference: Reference, demo_home: Path, tunedeck: Any
) -> None:
    run_dir = launch_json(tunedeck, "demo", "--name", "killed", *set_args())
    # 1. No warning at a random step.
    kill_at = random.Random().randint(3, 12)
    wait_for(lambda: logged_step(run_dir) >= kill_at, 120, f"step {kill_at}", poll_s=0.005)
    state = read_state(run_dir)
    assert state is not None and state.pgid
    os.killpg(state.pgid, signal.SIGKILL)
    listed = wait_for(
        lambda: _listed_status(tunedeck, "killed") == "interrupted", 30, "status interrupted"
    )
    assert listed
    assert tunedeck("resume", "killed").returncode == 0

    # 2. In the middle of writing a checkpoint.
    def resumed_pgid() -> int | None:
        s = read_state(run_dir)
        return s.pgid if s and s.pid and s.resumes == 1 else None

    pgid = wait_for(resumed_pgid, 60, "the resumed process")
    torn = kill_mid_checkpoint(run_dir, pgid)
    if torn is None:
        pytest.fail("the run finished before a checkpoint write could be interrupted")
    time.sleep(0.5)
    info = inspect_checkpoint(torn)
    assert not info.complete  # really torn: the marker is still there
    out = tunedeck("resume", "killed")
    assert out.returncode == 0, out.stderr
    assert f"skipped {torn.name}" in out.stderr
    wait_for(lambda: finished(run_dir) and read_state(run_dir).resumes == 2, 180, "the end")
    state = read_state(run_dir)
    assert state is not None and state.status == "completed", state
    assert state.resumed_from and int(state.resumed_from.rsplit("-", 1)[1]) < info.step
    assert_same_losses(run_dir, reference.losses)


def _listed_status(tunedeck: Any, run_id: str) -> str | None:
    out = tunedeck("runs", "--json")
    runs = {r["run_id"]: r for r in json.loads(out.stdout)["runs"]}
    return runs[run_id]["status"] if run_id in runs else None


# ---------------------------------------------------------------- torchrun, DPO, merge


def test_two_process_torchrun_on_cpu_stops_and_resumes(demo_home: Path, tunedeck: Any) -> None:
    """torchrun with two gloo workers; `tunedeck stop` reaches both ranks, which agree on the
    step to checkpoint; the resumed run completes with one metrics stream."""
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "ddp",
        "--set",
        "launch.num_gpus=2",
        "--set",
        "launch.strategy=ddp",
        "--set",
        "training.max_steps=16",
        "--set",
        "training.eval_strategy='no'",
        "--set",
        "training.max_length=64",
    )
    wait_for(lambda: logged_step(run_dir) >= 3 or finished(run_dir), 240, "step 3", poll_s=0.01)
    out = tunedeck("stop", "ddp", timeout=300)
    assert out.returncode == 0, out.stderr
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "interrupted", log[-3000:]
    assert state.stopped_by_user
    assert inspect_checkpoint(run_dir / "checkpoints" / f"checkpoint-{state.step}").complete
    assert "rng_state_1.pth" in {
        p.name for p in (run_dir / "checkpoints" / f"checkpoint-{state.step}").iterdir()
    }
    assert tunedeck("resume", "ddp").returncode == 0
    wait_for(lambda: finished(run_dir) and step_of(run_dir) == 16, 240, "the end", poll_s=0.2)
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "completed", log[-3000:]
    assert "torch.distributed.run" in log and "--nproc_per_node=2" in log
    assert log.count("tunedeck: completed at step 16") == 1  # rank 0 alone reports
    assert sorted(losses(run_dir)) == list(range(1, 17))  # one stream, each step once


def test_dpo_with_lora_then_merge_loads_and_generates(demo_home: Path, tunedeck: Any) -> None:
    prefs = demo_home / "data" / "demo" / "prefs.jsonl"
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "dpo",
        "--set",
        "trainer=dpo",
        "--set",
        f"dataset.path={prefs}",
        "--set",
        "dataset.eval_path=null",
        "--set",
        "training.eval_strategy='no'",
        "--set",
        "training.max_steps=6",
        "--set",
        "training.save_steps=2",
        "--set",
        "training.save_total_limit=1",
        "--set",
        "training.max_length=64",
    )
    wait_for(lambda: finished(run_dir), 180, "the DPO run", poll_s=0.2)
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "completed", log[-3000:]
    assert state.trainer == "dpo"
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))
    assert any("rewards/chosen" in r for r in records)
    # save_total_limit 1 was raised to 2: a torn newest checkpoint has one to fall back to.
    assert "save_total_limit 1 raised to 2" in log
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-4", "checkpoint-6"]

    out = tunedeck("merge", "dpo", timeout=300)
    assert out.returncode == 0, out.stderr
    merged = run_dir / "merged"
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "path = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "assert not any('lora' in n for n, _ in model.named_parameters())\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What is 2 plus 3?'}],\n"
        "    add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = model.generate(**ids, max_new_tokens=8, do_sample=False)\n"
        "print(out.shape[1] - ids['input_ids'].shape[1])\n"
    )
    gen = subprocess.run(
        [sys.executable, "-c", code, str(merged)], capture_output=True, text=True, timeout=180
    )
    assert gen.returncode == 0, gen.stderr
    assert int(gen.stdout.strip().splitlines()[-1]) >= 1


# ---------------------------------------------------------------- refusals


def test_bad_input_is_refused_cleanly(demo_home: Path, tunedeck: Any, tmp_path: Path) -> None:
    runs_root = demo_home / "runs"

    def refused(*args: str, expect: str, code: int = 2) -> None:
        out = tunedeck(*args)
        assert out.returncode == code, (args, out.stdout, out.stderr)
        assert expect in out.stderr, (expect, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout
        assert not runs_root.exists() or not any(runs_root.iterdir()), "nothing left behind"

    refused("demo", "--set", "model=/nowhere/model", expect="/nowhere/model: no such folder")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nmodel: [unclosed\n")
    refused("run", str(bad_yaml), expect="not valid YAML")
    bad_field = tmp_path / "bad-field.yaml"
    bad_field.write_text("name: x\nmodel: m\ndataset: {path: d.jsonl}\nlora: {r: 0}\n")
    refused("run", str(bad_field), expect="lora.r")
    broken = tmp_path / "broken.jsonl"
    lines = (demo_home / "data" / "demo" / "chat.jsonl").read_text().splitlines()[:20]
    lines[6] = lines[6][:25]  # a torn line
    broken.write_text("\n".join(lines) + "\n")
    refused("demo", "--set", f"dataset.path={broken}", expect="broken.jsonl:7")
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    refused("demo", "--runs-dir", str(not_a_dir / "runs"), expect="cannot create it")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        return  # root writes anywhere; the case above covered an unusable runs folder
    refused("demo", "--runs-dir", str(locked / "runs"), expect="cannot create it")
    assert not (locked / "runs").exists()


def test_stop_resume_refusals_name_the_run(reference: Reference, tunedeck: Any) -> None:
    env = {"TUNEDECK_HOME": str(reference.home)}
    out = tunedeck("stop", "ref", env=env)
    assert out.returncode == 2 and "not running (it is completed)" in out.stderr
    out = tunedeck("resume", "ref", env=env)
    assert out.returncode == 2 and "already completed" in out.stderr
    out = tunedeck("stop", "nope", env=env)
    assert out.returncode == 2 and "no such run" in out.stderr
    for o in (out,):
        assert "Traceback" not in o.stderr
