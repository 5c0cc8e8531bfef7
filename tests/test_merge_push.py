"""`tunedeck merge RUN --push REPO` against a stand-in Hub on 127.0.0.1 (`fake_hub`): refusals
without a token, offline, with a refused token or no server, each before anything is merged;
and a real merge of a demo run uploaded file by file."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from fake_hub import FakeHub

from runner.runs import read_state

TOKEN = "hf_" + "FakeTokenForTheLocalStandIn0123456789"


def _env(home: Path, endpoint: str, token: str | None) -> dict[str, str]:
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home / "hf-home"),  # no token saved by a login here
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": token or "",
    }
    return env


@pytest.fixture
def lora_run(demo_home: Path, tunedeck: Any) -> Path:
    out = tunedeck(
        "demo", "--name", "m", "--json",
        "--set", "training.max_steps=4", "--set", "training.save_steps=2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = read_state(run_dir)
        if state is not None and state.status in ("completed", "failed", "interrupted"):
            break
        time.sleep(0.2)
    state = read_state(run_dir)
    assert state is not None and state.status == "completed", (run_dir / "train.log").read_text()
    return run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_push_refusals_come_before_any_merge(
    lora_run: Path, tunedeck: Any, demo_home: Path
) -> None:
    def refused(env: dict[str, str], expect: str, *extra: str) -> None:
        out = tunedeck("merge", "m", "--push", "tester/demo", *extra, env=env)
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert expect in " ".join(out.stderr.split()), out.stderr
        assert "Traceback" not in out.stderr
        assert not (lora_run / "merged").exists()

    with FakeHub(TOKEN) as hub:
        refused(
            _env(demo_home, hub.endpoint, None),
            "no Hugging Face token: --push tester/demo needs HF_TOKEN",
        )
        offline = {**_env(demo_home, hub.endpoint, TOKEN), "HF_HUB_OFFLINE": "1"}
        refused(offline, "HF_HUB_OFFLINE is set")
        refused(_env(demo_home, hub.endpoint, "hf_wrong"), "refused the token (HTTP 401)")
        assert hub.record.repos == [] and hub.record.files == {}
    closed = f"http://127.0.0.1:{_free_port()}"
    refused(_env(demo_home, closed, TOKEN), f"cannot reach the Hub at {closed}")
    out = tunedeck("merge", "m", "--push", "no-slash", env=_env(demo_home, closed, TOKEN))
    assert out.returncode == 2 and "give the repo as user/name" in out.stderr


def test_merge_and_push_uploads_the_merged_model(
    lora_run: Path, tunedeck: Any, demo_home: Path
) -> None:
    with FakeHub(TOKEN) as hub:
        env = _env(demo_home, hub.endpoint, TOKEN)
        out = tunedeck(
            "merge", "m", "--push", "tester/demo-merged", "--private", env=env, timeout=300
        )
        assert out.returncode == 0, out.stderr
        assert "pushing as tester" in out.stdout and "pushed to" in out.stdout
        merged = lora_run / "merged"
        local = {p.name: p.read_bytes() for p in merged.iterdir() if p.is_file()}
        assert "model.safetensors" in local and "config.json" in local
        assert hub.record.files["tester/demo-merged"] == local
        assert (
            hub.record.repos[0]["name"] == "demo-merged"
            and hub.record.repos[0]["visibility"] == "private"
        )
        assert hub.record.unknown == []
        # Again: the merged folder is there, so it is pushed as it is (nothing is overwritten).
        again = tunedeck("merge", "m", "--push", "tester/demo-merged", env=env, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "pushing the model already in" in again.stdout
