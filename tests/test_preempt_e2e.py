"""Preemption notices on real runs of the demo model: a local server on 127.0.0.1 plays each
cloud's metadata service, the notice comes at a random step (or during an evaluation), and the
run must checkpoint and end `interrupted` within one step plus the poll interval, saying why, and
resume to the same per-step losses as the uninterrupted reference run. A slow metadata server
changes nothing, and `auto` on this machine reaches no address at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import preempt, run_lock
from runner.checkpoints import inspect_checkpoint
from runner.runs import read_metrics, read_state

sys.path.insert(0, str(Path(__file__).parent))
import test_runner_e2e
from metadata_server import MetadataServer
from test_runner_e2e import (
    Reference,
    assert_same_losses,
    finished,
    launch_json,
    logged_step,
    losses,
    set_args,
    wait_for,
)

# The session's uninterrupted run of the same settings, every run here is compared with.
reference = test_runner_e2e.reference

pytestmark = pytest.mark.slow

POLL_S = 0.2
# The stop comes at the end of the step running when the notice was served, or of the next one
# when that step ended as the watcher took the answer in; the server reads the last logged step.
STEP_SLACK = 2
# How much later than one poll interval the notice may be fetched on a loaded machine.
LATE_POLL_S = 5.0

REASONS = {
    "aws": r"spot notice \(aws\), (\d+) s",
    "gcp": r"spot notice \(gcp\), about (30) s",
    "azure": r"spot notice \(azure\), (\d+) s",
}
SECONDS = {"aws": (100, 120), "gcp": (30, 30), "azure": (20, 30)}


def _evals(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r]


def notice_run(
    tunedeck: Any,
    server: MetadataServer,
    name: str,
    setting: str,
    env: dict[str, str],
    at_step: int,
    extra: list[str] | None = None,
) -> tuple[Path, int]:
    """Launch the demo watching `server`, serve the notice once `at_step` is logged, wait for
    the stop; returns the run folder and the step logged when the notice was first served."""
    sets = [f"launch.preemption={setting}", f"launch.preemption_poll_s={POLL_S}", *(extra or [])]
    run_dir = launch_json(tunedeck, "demo", "--name", name, *set_args(sets), env=env)
    wait_for(lambda: logged_step(run_dir) >= at_step or finished(run_dir), 180, f"step {at_step}",
             poll_s=0.002)  # fmt: skip
    assert not finished(run_dir), "the run ended before the notice"
    server.on_notice_served = lambda: logged_step(run_dir)
    flipped_s = time.monotonic()
    server.notice.set()
    wait_for(lambda: finished(run_dir), 180, "the stop after the notice")
    wait_for(lambda: run_lock.is_held(run_dir) is False, 60, "the trainer to exit")
    assert server.notice_served_at_s is not None, "the notice was never asked for"
    assert server.notice_served_at_s - flipped_s <= POLL_S + LATE_POLL_S
    return run_dir, int(server.served_with)


def check_stopped(run_dir: Path, provider: str, served_step: int) -> int:
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "interrupted", log[-3000:]
    match = re.fullmatch(REASONS[provider], state.failure_reason or "")
    assert match, state.failure_reason
    low, high = SECONDS[provider]
    assert low <= int(match.group(1)) <= high
    assert state.preemption == state.failure_reason
    assert not state.stopped_by_user and not state.watchdog_stopped
    stopped = state.step
    # Equal when the notice came during the evaluation that follows the logged step.
    assert served_step <= stopped <= served_step + STEP_SLACK, (served_step, stopped)
    info = inspect_checkpoint(run_dir / "checkpoints" / f"checkpoint-{stopped}")
    assert info.complete, info.problems
    assert max(losses(run_dir)) == stopped
    assert f"{state.failure_reason}: checkpointing at the next step boundary" in log
    return stopped


def resume_and_compare(
    tunedeck: Any, server: MetadataServer, run_dir: Path, env: dict[str, str], ref: Reference
) -> None:
    server.notice.clear()  # a new machine, without a notice (the same server: never a real one)
    out = tunedeck("resume", run_dir.name, env=env)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: finished(run_dir), 180, "the resumed run")
    state = read_state(run_dir)
    assert state is not None and state.status == "completed", state
    assert state.failure_reason is None and state.preemption is None
    assert_same_losses(run_dir, ref.losses)
    assert _evals(run_dir) == [20, 40]


def test_aws_spot_notice_through_imdsv2_found_by_auto(
    reference: Reference, demo_home: Path, tunedeck: Any, tmp_path: Path
) -> None:
    """The default setting, `auto`, on a machine whose DMI data says Amazon EC2."""
    dmi = tmp_path / "dmi"
    dmi.mkdir()
    (dmi / "sys_vendor").write_text("Amazon EC2\n")
    (dmi / "product_name").write_text("g6e.xlarge\n")
    with MetadataServer("aws") as server:
        env = {**server.env(), preempt.DMI_DIR_ENV: str(dmi)}
        run_dir, served = notice_run(
            tunedeck, server, "aws", "auto", env, random.Random().randint(4, 24)
        )
        check_stopped(run_dir, "aws", served)
        puts = [r for r in server.requests if r.method == "PUT"]
        assert puts and puts[0].path == "/latest/api/token"
        assert all(
            r.headers.get("X-aws-ec2-metadata-token") in server.tokens
            for r in server.requests
            if r.method == "GET"
        )
        log = (run_dir / "train.log").read_text()
        assert f"preemption watch (aws): polling 127.0.0.1:{server.port}" in log
        resume_and_compare(tunedeck, server, run_dir, env, reference)


@pytest.mark.parametrize("provider", ["gcp", "azure"])
def test_gcp_and_azure_notices(
    reference: Reference, demo_home: Path, tunedeck: Any, provider: str
) -> None:
    with MetadataServer(provider) as server:
        env = server.env()
        run_dir, served = notice_run(
            tunedeck, server, provider, provider, env, random.Random().randint(4, 24)
        )
        check_stopped(run_dir, provider, served)
        resume_and_compare(tunedeck, server, run_dir, env, reference)


def test_a_notice_during_evaluation_cuts_it_short(
    reference: Reference, demo_home: Path, tunedeck: Any
) -> None:
    """The evaluation at step 20 runs over 320 rows, one at a time; the notice comes as it
    begins. The run stops at step 20 without finishing it, and the resume makes it up."""
    chat = demo_home / "data" / "demo" / "chat.jsonl"
    extra = [f"dataset.eval_path={chat}", "training.per_device_eval_batch_size=1"]
    with MetadataServer("aws") as server:
        env = server.env()
        run_dir, served = notice_run(tunedeck, server, "eval", "aws", env, 20, extra)
        state = read_state(run_dir)
        assert state is not None and state.status == "interrupted", state
        assert served == 20 and state.step == 20, "the stop waited for the evaluation"
        log = (run_dir / "train.log").read_text()
        assert "stopped at step 20; checkpoint-20 written (the evaluation of step 20 was cut" in log
        assert inspect_checkpoint(run_dir / "checkpoints" / "checkpoint-20").complete
        assert _evals(run_dir) == []  # nothing recorded for the cut evaluation
        resume_and_compare(tunedeck, server, run_dir, env, reference)
        log = (run_dir / "train.log").read_text()
        assert "the evaluation of step 20 was cut short by the stop: making it up" in log


def test_a_slow_metadata_server_changes_nothing(
    reference: Reference, demo_home: Path, tunedeck: Any
) -> None:
    """Every request hangs far past the timeout: the run trains as if nobody watched."""
    with MetadataServer("aws", slow_s=30) as server:
        run_dir = launch_json(
            tunedeck,
            "demo",
            "--name",
            "slow",
            *set_args(["launch.preemption=aws", f"launch.preemption_poll_s={POLL_S}"]),
            env=server.env(),
        )
        wait_for(lambda: finished(run_dir), 240, "the run")
        asked = len(server.requests)
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "completed", log[-3000:]
    assert asked >= 2, "the watcher never asked"
    assert log.count("metadata server not answering") == 1
    assert_same_losses(run_dir, reference.losses)


SITECUSTOMIZE = textwrap.dedent(
    """
    # Records every attempt of this process to reach another machine (tests only).
    import json, os, socket, sys

    _LOG = os.environ["TUNEDECK_TEST_NET_LOG"]

    def _note(what, where):
        with open(_LOG, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[:3], "what": what,
                                 "where": repr(where)}) + "\\n")

    def _wrap(name):
        original = getattr(socket.socket, name)
        def wrapper(self, *args, **kwargs):
            if self.family != socket.AF_UNIX:
                _note(name, args[:1] if name in ("connect", "connect_ex") else args[1:2])
            return original(self, *args, **kwargs)
        setattr(socket.socket, name, wrapper)

    for _name in ("connect", "connect_ex", "sendto", "sendmsg"):
        _wrap(_name)
    _getaddrinfo = socket.getaddrinfo
    def _lookup(host, *args, **kwargs):
        _note("getaddrinfo", host)
        return _getaddrinfo(host, *args, **kwargs)
    socket.getaddrinfo = _lookup
    _note("started", None)
    """
)


def test_auto_on_this_machine_reaches_no_address(
    demo_home: Path, tunedeck: Any, tmp_path: Path
) -> None:
    """A real run with the default `auto`, every process of it recording its network attempts:
    the CLI and the trainer make none."""
    if preempt.detect_cloud(preempt.DMI_DIR) is not None:
        pytest.skip("this machine is a cloud machine: auto would rightly poll its metadata")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    net_log = tmp_path / "net.jsonl"
    root = Path(__file__).resolve().parent.parent
    env = {
        "PYTHONPATH": os.pathsep.join([str(hooks), str(root)]),
        "TUNEDECK_TEST_NET_LOG": str(net_log),
    }
    real_dmi = {**os.environ, **env}
    real_dmi.pop(preempt.DMI_DIR_ENV, None)  # this machine's own DMI data
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", "--name", "quiet", "--json",
         "--set", "training.max_steps=6", "--set", "training.eval_strategy='no'"],
        capture_output=True, text=True, env=real_dmi, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    wait_for(lambda: finished(run_dir), 240, "the run")
    state = read_state(run_dir)
    log = (run_dir / "train.log").read_text()
    assert state is not None and state.status == "completed", log[-3000:]
    assert "preemption watch: no cloud recognised" in log
    records = [json.loads(line) for line in net_log.read_text().splitlines()]
    started = {r["pid"] for r in records if r["what"] == "started"}
    assert state.pid in started and len(started) >= 2, "the recorder ran in the CLI and trainer"
    attempts = [r for r in records if r["what"] != "started"]
    assert attempts == []


def test_a_notice_before_the_first_step_ends_the_run_at_once(
    demo_home: Path, tunedeck: Any
) -> None:
    with MetadataServer("azure") as server:
        server.notice.set()  # already there when the trainer starts
        run_dir = launch_json(
            tunedeck, "demo", "--name", "early", *set_args(["launch.preemption=azure"]),
            env=server.env(),
        )  # fmt: skip
        wait_for(lambda: finished(run_dir), 180, "the stop")
        wait_for(lambda: run_lock.is_held(run_dir) is False, 60, "the trainer to exit")
    state = read_state(run_dir)
    assert state is not None and state.status == "interrupted", state
    assert re.fullmatch(
        REASONS["azure"] + "; stopped before the first step; a resume starts where the run was",
        state.failure_reason or "",
    ), state.failure_reason
    assert state.step == 0 and logged_step(run_dir) == 0
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


@pytest.fixture
def leave_no_trainer(demo_home: Path) -> Iterator[None]:
    """Whatever a test left running under this home (torchrun and its workers, each in a
    session of its own) is killed at its end."""
    yield
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "runner.train" in cmd and str(demo_home) in cmd:
            with contextlib.suppress(psutil.Error):
                proc.kill()


DDP = [
    "launch.num_gpus=2", "launch.strategy=ddp", "training.max_steps=16",
    "training.eval_strategy='no'", "training.max_length=64", "launch.preemption=gcp",
    f"launch.preemption_poll_s={POLL_S}",
]  # fmt: skip


def test_two_processes_agree_on_the_notice_rank_0_saw(
    demo_home: Path, tunedeck: Any, leave_no_trainer: None
) -> None:
    """torchrun with two gloo workers: only rank 0 watches; the all-reduce of the stop flag
    carries the notice to rank 1, both save their part of one checkpoint and leave."""
    args = [a for s in DDP for a in ("--set", s)]
    with MetadataServer("gcp") as server:
        env = server.env()
        run_dir = launch_json(tunedeck, "demo", "--name", "two", *args, env=env)
        wait_for(lambda: logged_step(run_dir) >= 3 or finished(run_dir), 300, "step 3", 0.01)
        assert not finished(run_dir), "the run ended before the notice"
        server.notice.set()
        wait_for(lambda: finished(run_dir), 300, "the stop")
        wait_for(lambda: run_lock.is_held(run_dir) is False, 120, "both workers to exit")
        state = read_state(run_dir)
        log = (run_dir / "train.log").read_text()
        assert state is not None and state.status == "interrupted", log[-3000:]
        assert state.failure_reason == "spot notice (gcp), about 30 s"
        assert state.step < 16
        folder = run_dir / "checkpoints" / f"checkpoint-{state.step}"
        assert inspect_checkpoint(folder).complete
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in folder.iterdir()}
        assert log.count("preemption watch (gcp): polling") == 1  # rank 0 alone watches
        server.notice.clear()
        out = tunedeck("resume", "two", env=env)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: finished(run_dir) and read_state(run_dir).step == 16, 300, "the end")
    state = read_state(run_dir)
    assert state is not None and state.status == "completed", state
    assert sorted(losses(run_dir)) == list(range(1, 17))


def test_two_processes_end_at_once_on_a_notice_before_the_first_step(
    demo_home: Path, tunedeck: Any, leave_no_trainer: None
) -> None:
    """The notice is there while the workers load: rank 0 hands SIGTERM to torchrun, which ends
    every worker, and the run says why."""
    args = [a for s in DDP for a in ("--set", s)]
    with MetadataServer("gcp") as server:
        server.notice.set()
        run_dir = launch_json(tunedeck, "demo", "--name", "two-early", *args, env=server.env())
        wait_for(lambda: finished(run_dir), 300, "the stop")
        wait_for(lambda: run_lock.is_held(run_dir) is False, 120, "torchrun and its workers")
    state = read_state(run_dir)
    assert state is not None and state.status == "interrupted", state
    assert state.failure_reason == (
        "spot notice (gcp), about 30 s; stopped before the first step; a resume starts where "
        "the run was"
    )
    assert state.step == 0 and logged_step(run_dir) == 0
