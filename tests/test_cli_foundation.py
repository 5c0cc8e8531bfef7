"""`tunedeck gpus` and `tunedeck presets`, run as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tui.cli import COMMAND_MODULES, _only_runs_dir


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
    for command in COMMAND_MODULES:
        assert command in out.stdout, command


def test_unknown_command_is_a_usage_error(home: Path) -> None:
    out = tunedeck("planx", home=home)
    assert out.returncode == 2
    assert "No such command 'planx'" in out.stderr
    assert "Traceback" not in out.stderr


def _imported_by(args: list[str], home: Path) -> set[str]:
    """The modules a real `tunedeck ARGS` run has loaded when it finishes."""
    code = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: sys.stderr.write('\\nMODULES=' + json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = ['tunedeck', *{args!r}]\n"
        "from tui.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "TUNEDECK_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stderr.rsplit("MODULES=", 1)[1]))


def test_each_command_loads_only_its_own_module(home: Path) -> None:
    plan = _imported_by(["plan", "--model", "Qwen/Qwen2.5-0.5B", "--gpu", "L4", "--json"], home)
    # The planner answers without typer, click or Rich, and without the other commands.
    assert not {"typer", "click", "rich.console", "pydantic"} & plan
    commands = {m for m in plan if m.startswith("tui.commands.")}
    assert commands == {"tui.commands.plan_cmd", "tui.commands.common"}
    presets = _imported_by(["presets", "--json"], home)
    assert "tui.commands.presets_cmd" in presets
    assert not {"tui.commands.run_cmd", "tui.commands.data_cmd", "tui.app"} & presets


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], None),
        (["--runs-dir", "/r"], "/r"),
        (["--runs-dir=/r"], "/r"),
        (["--runs-dir"], False),
        (["--runs-dir", "--help"], False),
        (["runs"], False),
        (["--runs-dir", "/r", "runs"], False),
        (["--help"], False),
    ],
)
def test_what_opens_the_app_directly(args: list[str], expected: object) -> None:
    assert _only_runs_dir(args) == expected
