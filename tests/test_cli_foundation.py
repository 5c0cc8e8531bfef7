"""`tunedeck gpus` and `tunedeck presets`, run as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def tunedeck(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "TUNEDECK_HOME": str(home), "COLUMNS": "100", **(env or {})}
    full_env.pop("TUNEDECK_RUNS", None)
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_gpus_json_without_a_driver_is_valid_and_empty(home: Path) -> None:
    out = tunedeck("gpus", "--json", home=home)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    if data["available"]:
        pytest.skip("this machine has an NVIDIA GPU; the real path is tested in test_gpu.py")
    assert data["gpus"] == []
    assert data["reason"]
    host = data["host"]
    assert host["cpu_cores_logical"] >= 1
    assert host["ram_total_bytes"] > 0
    assert host["disk_free_bytes"] > 0
    assert host["disk_path"] == str(home / "runs")


def test_gpus_human_output_says_so_plainly(home: Path) -> None:
    out = tunedeck("gpus", home=home)
    assert out.returncode == 0
    if "driver" in out.stdout and "CUDA" in out.stdout and "GPU" in out.stdout.split("\n")[0]:
        pytest.skip("this machine has an NVIDIA GPU")
    assert "no NVIDIA GPU found" in out.stdout
    assert "host" in out.stdout and "RAM" in out.stdout
    assert "Traceback" not in out.stderr


def test_presets_list_show_and_new(home: Path) -> None:
    listed = tunedeck("presets", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    names = {p["name"] for p in json.loads(listed.stdout)["presets"]}
    assert {"demo", "qlora-llama3.1-8b-24gb"} <= names

    shown = tunedeck(
        "presets", "show", "demo", "--set", "training.max_steps=9", "--json", home=home
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["training"]["max_steps"] == 9

    new = tunedeck(
        "presets",
        "new",
        "short-demo",
        "--from",
        "demo",
        "--set",
        "training.max_steps=12",
        home=home,
    )
    assert new.returncode == 0, new.stderr
    saved = home / "config" / "presets" / "short-demo.yaml"
    assert saved.is_file()
    again = tunedeck("presets", "show", "short-demo", "--json", home=home)
    assert json.loads(again.stdout)["training"]["max_steps"] == 12


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["presets", "show", "demo", "--set", "lora.r=0"],
            "lora.r: must be a positive integer, got 0",
        ),
        (["presets", "show", "nope"], "no such preset"),
        (["presets", "show", "demo", "--set", "noequals"], "expected key=value"),
        (["presets", "new", "demo", "--from", "demo"], "shipped presets are never overwritten"),
        (["presets", "new", "bad name!", "--from", "demo"], "name: must be 1-64 characters"),
        (
            ["presets", "new", "x", "--from", "demo", "--set", "training.warmup=3"],
            "training.warmup",
        ),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(home: Path, args: list[str], expected: str) -> None:
    out = tunedeck(*args, home=home)
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (home / "config" / "presets" / "x.yaml").exists()


def test_help_lists_the_commands(home: Path) -> None:
    out = tunedeck("--help", home=home)
    assert out.returncode == 0
    for command in ("gpus", "presets"):
        assert command in out.stdout
