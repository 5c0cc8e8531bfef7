"""The off-box mirror, on real runs of the demo model: mirrored to a local folder and to an
S3-compatible server on 127.0.0.1 (moto's server mode), the run SIGKILLed, its folder deleted,
and `tunedeck resume --from` under another TUNEDECK_HOME must finish it with the per-step losses
of an uninterrupted run. A transfer cut off mid-way (no manifest, a wrong sha256, an uploader
killed mid-file) is never resumed from."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import run_lock
from runner.mirror import MANIFEST_FILE, mirror_text, open_url
from runner.mirror_fetch import Damaged, mirrored_checkpoints, newest_verified, read_manifest
from runner.runs import RunState, read_metrics, read_state

sys.path.insert(0, str(Path(__file__).parent))
from test_runner_e2e import finished, launch_json, wait_for

STEPS = 100
SETTINGS = [
    f"training.max_steps={STEPS}",
    "training.save_steps=5",
    "training.eval_steps=50",
    "training.logging_steps=1",
    "training.save_total_limit=3",
    "training.max_length=64",
]
AWS_SECRET = "mirror-test-secret-key-0123456789"


def set_args(*extra: str) -> list[str]:
    out: list[str] = []
    for item in [*SETTINGS, *extra]:
        out += ["--set", item]
    return out


def losses(run_dir: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if "loss" in record:
            assert record["step"] not in out, f"step {record['step']} logged twice"
            out[record["step"]] = record["loss"]
    return out


def link_demo(home: Path, demo_dir: Path) -> Path:
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "data" / "demo").symlink_to(demo_dir, target_is_directory=True)
    return home


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[int, float]:
    """An uninterrupted run with no mirror: the losses every mirrored run must reproduce."""
    home = link_demo(tmp_path_factory.mktemp("mirror-reference"), demo_dir)
    env = {**os.environ, "TUNEDECK_HOME": str(home), "COLUMNS": "120"}
    env.pop("TUNEDECK_RUNS", None)
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", "--name", "ref", "--json", *set_args()],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    run_dir = home / "runs" / "ref"
    wait_for(lambda: finished(run_dir), 300, "the reference run", poll_s=0.2)
    state = read_state(run_dir)
    assert state is not None and state.status == "completed", state
    got = losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    return got


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1 with a fresh bucket; the AWS_* variables
    of this test (and of every process it starts) point there with dummy credentials."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # moto keeps its buckets in the process, across servers: a bucket of this test's own.
    bucket = f"mirror-{uuid.uuid4().hex[:12]}"
    fs, _ = open_url(f"s3://{bucket}")
    fs.mkdir(bucket)
    try:
        yield f"s3://{bucket}/runs"
    finally:
        fs.clear_instance_cache()
        server.stop()


def complete_on_mirror(url: str) -> list[int]:
    """Steps of the checkpoints whose manifest checks out against the mirror's listing."""
    fs, root = open_url(url)
    good = []
    for step, remote_dir in mirrored_checkpoints(fs, root):
        with contextlib.suppress(Damaged, FileNotFoundError):
            read_manifest(fs, remote_dir, step)
            good.append(step)
    return good


def flip_a_byte(url: str, step: int) -> None:
    """Same size, other content: only the sha256 can tell."""
    fs, root = open_url(url)
    path = f"{root}/checkpoints/checkpoint-{step}/adapter_model.safetensors"
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0xFF
    fs.pipe_file(path, bytes(data))


def drop_manifest(url: str, step: int) -> None:
    """What an upload cut off before its end leaves: files, no manifest."""
    fs, root = open_url(url)
    fs.rm_file(f"{root}/checkpoints/checkpoint-{step}/{MANIFEST_FILE}")


def mirrored_text(url: str, name: str) -> str:
    fs, root = open_url(url)
    return fs.cat_file(f"{root}/{name}").decode()


def kill_delete_resume(
    url: str,
    tamper: Any,
    reference: dict[int, float],
    demo_dir: Path,
    tmp_path: Path,
    tunedeck: Any,
) -> None:
    # More checkpoints kept than the other runs (no effect on the losses): an upload that falls
    # behind cannot see the older mirrored checkpoint rotated away before the kill.
    extra = (f"launch.mirror={url}", "training.save_total_limit=10")
    run_dir = launch_json(tunedeck, "demo", "--name", "far", *set_args(*extra))
    run_url = f"{url}/far"
    wait_for(
        lambda: len(complete_on_mirror(run_url)) >= 2,
        180,
        "two checkpoints complete on the mirror",
        poll_s=0.02,
    )
    state = read_state(run_dir)
    assert state is not None and state.pgid
    os.killpg(state.pgid, signal.SIGKILL)
    wait_for(lambda: not _alive(state.pgid), 60, "the trainer to die")
    assert (read_state(run_dir) or state).status != "completed", "the run ended before the kill"
    mirrored = complete_on_mirror(run_url)  # what the mirror holds now that nothing writes it
    assert len(mirrored) >= 2, mirrored
    newest, older = mirrored[0], mirrored[1]
    tamper(run_url, newest)
    shutil.rmtree(run_dir)

    other = link_demo(tmp_path / "other-box", demo_dir)
    env = {"TUNEDECK_HOME": str(other)}
    out = tunedeck("resume", "--from", run_url, "--json", env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    warnings = json.loads(out.stdout)["warnings"]
    assert any(f"skipped checkpoint-{newest} on the mirror" in w for w in warnings), warnings
    new_dir = other / "runs" / "far"
    wait_for(lambda: finished(new_dir), 300, "the resumed run", poll_s=0.2)
    state = read_state(new_dir)
    log = (new_dir / "train.log").read_text(errors="replace")[-3000:]
    assert state is not None and state.status == "completed", log
    assert state.resumed_from and state.resumed_from.endswith(f"checkpoint-{older}"), state
    got = losses(new_dir)
    assert sorted(got) == list(range(1, STEPS + 1)), "every step exactly once"
    worst = max(range(1, STEPS + 1), key=lambda s: abs(got[s] - reference[s]))
    assert abs(got[worst] - reference[worst]) <= 1e-6, (worst, got[worst], reference[worst])

    # The mirror followed the resumed run to its end: the trainer exits once it has caught up.
    wait_for(lambda: run_lock.is_held(new_dir) is False, 120, "the trainer to exit")
    assert STEPS in complete_on_mirror(run_url)
    final = read_state(new_dir)
    assert final is not None and final.mirror_step == STEPS and final.mirror_error is None
    assert mirror_text(final) is not None and "up to date" in (mirror_text(final) or "")
    mirrored_state = RunState.model_validate_json(mirrored_text(run_url, "state.json"))
    assert mirrored_state.status == "completed" and mirrored_state.step == STEPS
    for name in ("config.yaml", "state.json"):
        assert AWS_SECRET not in mirrored_text(run_url, name)
    listed = tunedeck("runs", env=env)
    assert "mirror" in listed.stdout and f"checkpoint-{STEPS}" in listed.stdout, listed.stdout


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_local_mirror_survives_the_box(
    reference: dict[int, float], demo_home: Path, demo_dir: Path, tmp_path: Path, tunedeck: Any
) -> None:
    url = f"file://{tmp_path / 'volume' / 'runs'}"
    kill_delete_resume(url, flip_a_byte, reference, demo_dir, tmp_path, tunedeck)


@pytest.mark.slow
def test_s3_mirror_survives_the_box(
    reference: dict[int, float],
    demo_home: Path,
    demo_dir: Path,
    tmp_path: Path,
    tunedeck: Any,
    s3_server: str,
) -> None:
    kill_delete_resume(s3_server, drop_manifest, reference, demo_dir, tmp_path, tunedeck)
    other = tmp_path / "other-box" / "runs" / "far"
    for path in other.rglob("*"):
        if path.is_file():
            assert AWS_SECRET.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------- cut transfers, refusals


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """A finished demo run's folder with a few real checkpoints."""
    home = link_demo(tmp_path_factory.mktemp("mirror-small"), demo_dir)
    env = {**os.environ, "TUNEDECK_HOME": str(home)}
    env.pop("TUNEDECK_RUNS", None)
    args = ["--set", "training.max_steps=10", "--set", "training.save_steps=5"]
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", "--name", "small", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    run_dir = home / "runs" / "small"
    wait_for(lambda: finished(run_dir), 300, "the small run", poll_s=0.2)
    return run_dir


@pytest.mark.slow
def test_an_uploader_killed_mid_file_leaves_nothing_to_resume_from(
    two_checkpoints: Path, tmp_path: Path
) -> None:
    """A real upload in another process, SIGKILLed while a large file is being written: the
    checkpoint has no manifest and the one before it is taken."""
    source = tmp_path / "source"
    for step in (5, 10):
        shutil.copytree(
            two_checkpoints / "checkpoints" / f"checkpoint-{step}", source / f"checkpoint-{step}"
        )
    with (source / "checkpoint-10" / "zz-padding.bin").open("wb") as fh:
        for _ in range(16):
            fh.write(os.urandom(4 * 2**20))  # 64 MiB: eight chunks, time enough to cut it
    mirror = tmp_path / "mirror" / "run"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from runner.mirror import open_url, upload_checkpoint\n"
        "fs, root = open_url(sys.argv[1])\n"
        "for step in (5, 10):\n"
        "    upload_checkpoint(fs, f'{root}/checkpoints/checkpoint-{step}',\n"
        "                      Path(sys.argv[2]) / f'checkpoint-{step}')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(mirror), str(source)])
    partial = mirror / "checkpoints" / "checkpoint-10" / "zz-padding.bin"
    try:
        wait_for(
            lambda: partial.exists() or proc.poll() is not None, 120, "the big file's upload", 0.001
        )
        proc.kill()
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the upload finished before it could be cut"
    assert not (mirror / "checkpoints" / "checkpoint-10" / MANIFEST_FILE).exists()
    fs, root = open_url(str(mirror))
    with pytest.raises(Damaged, match="no manifest"):
        read_manifest(fs, f"{root}/checkpoints/checkpoint-10", 10)
    warnings: list[str] = []
    got = newest_verified(fs, root, tmp_path / "here" / "checkpoints", warnings)
    assert got is not None and got.step == 5 and got.complete
    assert warnings == [
        "skipped checkpoint-10 on the mirror: no manifest (its upload never finished)"
    ]
    assert sorted(p.name for p in (tmp_path / "here" / "checkpoints").iterdir()) == ["checkpoint-5"]


@pytest.mark.slow
def test_manifests_that_lie_are_refused(two_checkpoints: Path, tmp_path: Path) -> None:
    from runner.mirror import upload_checkpoint

    fs, root = open_url(str(tmp_path / "mirror" / "run"))
    remote = f"{root}/checkpoints/checkpoint-10"
    manifest = upload_checkpoint(fs, remote, two_checkpoints / "checkpoints" / "checkpoint-10")
    assert {e["path"] for e in manifest["files"]} >= {"adapter_model.safetensors", "optimizer.pt"}
    assert len(read_manifest(fs, remote, 10)) == len(manifest["files"])
    original = json.dumps(manifest)

    def rewrite(change: Any) -> None:
        data = json.loads(original)
        change(data)
        fs.pipe_file(f"{remote}/{MANIFEST_FILE}", json.dumps(data).encode())

    cases = [
        (lambda d: d["files"][0].update(size=d["files"][0]["size"] + 1), "its manifest says"),
        (lambda d: d["files"].append({"path": "gone.bin", "size": 1, "sha256": "0"}), "missing"),
        (lambda d: d["files"][0].update(path="../../escape"), "malformed"),
        (lambda d: d.update(step=5), "for step 5"),
        (lambda d: d.update(files=[]), "lists no files"),
    ]
    for change, expect in cases:
        rewrite(change)
        with pytest.raises(Damaged, match=expect):
            read_manifest(fs, remote, 10)
    rewrite(lambda d: d["files"][0].update(sha256="0" * 64))
    warnings: list[str] = []
    assert newest_verified(fs, root, tmp_path / "here" / "checkpoints", warnings) is None
    assert "does not match its sha256" in warnings[0]
    assert not list((tmp_path / "here" / "checkpoints").iterdir()), "nothing half-fetched kept"


@pytest.mark.slow
def test_resume_from_refusals_are_plain(
    two_checkpoints: Path, tmp_path: Path, tunedeck_home: Path, tunedeck: Any
) -> None:
    mirror = tmp_path / "mirror"
    out = tunedeck("resume", "--from", str(mirror / "nothing"))
    assert out.returncode == 2 and "no tunedeck run there" in out.stderr, out.stderr
    out = tunedeck("resume", "--from", "nosuchscheme://bucket/run")
    assert out.returncode == 2 and "Protocol not known" in out.stderr, out.stderr
    out = tunedeck("resume", "--from", str(mirror), "small")
    assert out.returncode == 2 and "one of them" in out.stderr
    # A completed run on the mirror is not fetched again.
    fs, root = open_url(str(mirror / "small"))
    fs.makedirs(root, exist_ok=True)
    for name in ("config.yaml", "state.json"):
        fs.put_file(str(two_checkpoints / name), f"{root}/{name}")
    out = tunedeck("resume", "--from", str(mirror / "small"))
    assert out.returncode == 2 and "has completed" in out.stderr, out.stderr
    assert not (tunedeck_home / "runs" / "small").exists()
    assert "Traceback" not in out.stderr
    out = tunedeck("demo", "--set", "launch.mirror=relative/runs")
    assert out.returncode == 2 and "is a relative path" in out.stderr, out.stderr
    # A scheme whose backend is not installed is refused before anything is created.
    out = tunedeck("demo", "--set", "launch.mirror=gs://bucket/runs")
    assert out.returncode == 2 and "launch.mirror: mirror gs://bucket/runs" in out.stderr
    assert "gcsfs" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tunedeck_home / "runs").exists() or not any((tunedeck_home / "runs").iterdir())
    out = tunedeck("demo", "--set", "launch.notify=[ntfy-topic-without-scheme]")
    assert out.returncode == 2 and "launch.notify: item 1 is not a URL" in out.stderr
    out = tunedeck("demo", "--set", "launch.mirror=s3://AKIA:secret@bucket/runs")
    assert out.returncode == 2 and "password in the URL" in out.stderr, out.stderr
    # The message itself does not repeat it (the --set echoed before it is the user's own).
    assert "secret" not in out.stderr.split("launch.mirror:", 1)[1]


# ---------------------------------------------------------------- the emergency checkpoint


@pytest.mark.slow
def test_a_stop_waits_for_its_checkpoint_to_reach_the_mirror(
    demo_home: Path, tmp_path: Path, tunedeck: Any
) -> None:
    """SIGTERM: the checkpoint written on the way out is on the mirror, complete, by the time
    the trainer has exited."""
    url = str(tmp_path / "volume")
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "stopped",
        "--set",
        "training.max_steps=200000",
        "--set",
        "training.save_steps=50",
        "--set",
        "training.eval_steps=100000",
        "--set",
        f"launch.mirror={url}",
    )
    wait_for(lambda: (s := read_state(run_dir)) and s.step >= 7, 180, "some training")
    out = tunedeck("stop", "stopped")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: run_lock.is_held(run_dir) is False, 120, "the trainer to exit")
    state = read_state(run_dir)
    assert state is not None and state.status == "interrupted"
    assert state.checkpoint_step == state.step and state.step % 50 != 0  # the stop's own
    assert complete_on_mirror(f"{url}/stopped")[0] == state.step
    assert state.mirror_step == state.step and state.mirror_error is None
    mirrored_state = RunState.model_validate_json(mirrored_text(f"{url}/stopped", "state.json"))
    assert mirrored_state.status == "interrupted" and mirrored_state.mirror_step == state.step


@pytest.mark.slow
def test_an_urgent_checkpoint_goes_ahead_of_an_upload_in_flight(
    two_checkpoints: Path, tmp_path: Path
) -> None:
    """The uploader thread itself: while a large older checkpoint is going up, the emergency
    checkpoint of a stop arrives; the older upload is given up and the new one mirrored."""
    from runner.mirror import Mirror

    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    older = run_dir / "checkpoints" / "checkpoint-5"
    shutil.copytree(two_checkpoints / "checkpoints" / "checkpoint-5", older)
    with (older / "zz-padding.bin").open("wb") as fh:
        for _ in range(32):
            fh.write(os.urandom(4 * 2**20))  # 128 MiB: sixteen chunks
    url = str(tmp_path / "volume")
    said: list[str] = []
    mirror = Mirror(run_dir, url, said.append)
    try:
        wait_for(lambda: mirror._current_step == 5, 60, "the older upload to start", 0.001)
        shutil.copytree(
            two_checkpoints / "checkpoints" / "checkpoint-10",
            run_dir / "checkpoints" / "checkpoint-10",
        )
        mirror.checkpoint_saved(10, urgent=True)
    finally:
        assert mirror.finish(120), said
    remote = tmp_path / "volume" / "run" / "checkpoints"
    assert (remote / "checkpoint-10" / MANIFEST_FILE).is_file()
    assert not (remote / "checkpoint-5" / MANIFEST_FILE).exists(), "it was not given up"
    assert complete_on_mirror(f"{url}/run") == [10]
    state = read_state(run_dir)
    assert state is not None and state.mirror_step == 10 and said == []


# ---------------------------------------------------------------- shown to people


def test_runs_and_the_monitor_show_the_mirror(tmp_path: Path, tunedeck: Any) -> None:
    import asyncio
    import socket

    from fake_nvml import two_h100s
    from test_tui_helpers import make_app, shows

    from runner.runs import RunStore, now_iso, write_state

    root = tmp_path / "runs"
    run_dir = root / "far"
    run_dir.mkdir(parents=True)
    state = RunState(
        run_id="far",
        status="interrupted",
        host=socket.gethostname(),
        started_at=now_iso(),
        step=40,
        max_steps=100,
        checkpoint_step=40,
        mirror_url="s3://bucket/runs/far",
        mirror_step=35,
        mirror_at=now_iso(),
    )
    write_state(run_dir, state)
    assert mirror_text(state) == "checkpoint-35, 0 s ago, 5 steps behind"
    failing = state.model_copy(update={"mirror_error": "PermissionError: Access Denied"})
    assert mirror_text(failing) == "error: PermissionError: Access Denied"
    assert mirror_text(state.model_copy(update={"mirror_url": None})) is None
    out = tunedeck("runs", "--runs-dir", str(root))
    assert "mirror" in out.stdout and "checkpoint-35" in out.stdout, out.stdout

    async def monitor() -> None:
        app = make_app(two_h100s(), root, store=RunStore(root), watch_run="far")
        async with app.run_test(size=(120, 30)) as pilot:
            assert await shows(pilot, "mirror checkpoint-35", "5 steps behind")

    asyncio.run(monitor())


def test_autostart_from_a_mirror(tunedeck_home: Path, tunedeck: Any) -> None:
    unit = tunedeck("autostart", "--from", "s3://bucket/runs/far")
    assert unit.returncode == 0, unit.stderr
    root = tunedeck_home / "runs"
    assert f"resume --from s3://bucket/runs/far --runs-dir {root}" in unit.stdout
    assert "ExecStart=-" in unit.stdout  # a completed run at a later boot is no failed unit
    cron = tunedeck("autostart", "--cron", "--from", "s3://bucket/runs/far")
    assert "@reboot" in cron.stdout and "resume --from s3://bucket/runs/far" in cron.stdout


@pytest.mark.slow
def test_resume_from_on_a_box_without_the_data_keeps_the_folder(
    two_checkpoints: Path, tmp_path: Path, tunedeck_home: Path, demo_dir: Path, tunedeck: Any
) -> None:
    """The demo model is not on the new box yet: the refusal says what is missing and how to
    go on; once it is there, a plain resume of the fetched folder finishes the run."""
    from runner.mirror import upload_checkpoint, upload_files

    fs, root = open_url(str(tmp_path / "mirror" / "small"))
    upload_files(fs, root, two_checkpoints, ("config.yaml", "metrics.jsonl"))
    state = read_state(two_checkpoints)
    assert state is not None
    cut = state.model_copy(update={"status": "interrupted", "ended_at": None, "step": 10})
    fs.pipe_file(f"{root}/state.json", cut.model_dump_json().encode())
    upload_checkpoint(
        fs, f"{root}/checkpoints/checkpoint-10", two_checkpoints / "checkpoints" / "checkpoint-10"
    )
    out = tunedeck("resume", "--from", str(tmp_path / "mirror" / "small"))
    assert out.returncode == 2, out.stderr
    assert "no such folder" in out.stderr and "tunedeck resume small" in out.stderr, out.stderr
    here = tunedeck_home / "runs" / "small"
    assert (here / "checkpoints" / "checkpoint-10").is_dir()
    link_demo(tunedeck_home, demo_dir)
    out = tunedeck("resume", "small")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: finished(here), 180, "the resumed run", poll_s=0.2)
    final = read_state(here)
    assert final is not None and final.status == "completed" and final.step == 10


@pytest.mark.slow
def test_a_mirror_that_fails_is_reported_and_training_goes_on(
    demo_home: Path, tunedeck: Any, s3_server: str
) -> None:
    """No such bucket: every upload fails; the run completes all the same, and says why."""
    run_dir = launch_json(
        tunedeck,
        "demo",
        "--name",
        "nobucket",
        "--set",
        "training.max_steps=10",
        "--set",
        "training.save_steps=5",
        "--set",
        "launch.mirror=s3://no-such-bucket/runs",
        "--set",
        "launch.mirror_wait_s=3",
    )
    wait_for(lambda: finished(run_dir), 180, "the run", poll_s=0.2)
    wait_for(lambda: run_lock.is_held(run_dir) is False, 60, "the trainer to exit")
    state = read_state(run_dir)
    assert state is not None and state.status == "completed" and state.step == 10
    assert state.mirror_step is None and state.mirror_error, state
    assert (mirror_text(state) or "").startswith("error: ")
    log = (run_dir / "train.log").read_text()
    assert "upload failed" in log and "training goes on" in log
    assert AWS_SECRET not in log


@pytest.mark.slow
def test_saves_that_outrun_the_uploads_skip_to_the_newest(
    two_checkpoints: Path, tmp_path: Path
) -> None:
    """Two saves while a large upload is in flight: that upload finishes, then only the newer
    of the two goes up."""
    from runner.mirror import Mirror

    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    first = run_dir / "checkpoints" / "checkpoint-5"
    shutil.copytree(two_checkpoints / "checkpoints" / "checkpoint-5", first)
    with (first / "zz-padding.bin").open("wb") as fh:
        for _ in range(32):
            fh.write(os.urandom(4 * 2**20))
    source = two_checkpoints / "checkpoints" / "checkpoint-10"
    url = str(tmp_path / "volume")
    said: list[str] = []
    mirror = Mirror(run_dir, url, said.append)
    try:
        wait_for(lambda: mirror._current_step == 5, 60, "the first upload to start", 0.001)
        for step in (10, 15):
            target = run_dir / "checkpoints" / f"checkpoint-{step}"
            shutil.copytree(source, target)
            trainer_state = json.loads((target / "trainer_state.json").read_text())
            trainer_state["global_step"] = step
            (target / "trainer_state.json").write_text(json.dumps(trainer_state))
            mirror.checkpoint_saved(step)
        assert mirror._current_step == 5, "the first upload should still be going"
    finally:
        assert mirror.finish(120), said
    assert complete_on_mirror(f"{url}/run") == [15, 5]
    assert not (tmp_path / "volume" / "run" / "checkpoints" / "checkpoint-10").exists()
    state = read_state(run_dir)
    assert state is not None and state.mirror_step == 15 and said == []
