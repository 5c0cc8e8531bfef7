"""Shared fixtures: an isolated tunedeck home, the tiny demo model, and the `tunedeck` command.

- `tunedeck_home`: a fresh `TUNEDECK_HOME` under tmp_path, set in the environment of the test
  (and of every subprocess it starts), with `TUNEDECK_RUNS` removed.
- `demo_dir`: the demo model and data (`model/`, `chat.jsonl`, `chat_eval.jsonl`, `prefs.jsonl`),
  built once per test session in its own folder.
- `demo_home`: `tunedeck_home` with that demo linked in, so the `demo` preset resolves.
- `tunedeck`: runs the real command (`python -m tui.cli ...`) as a subprocess.

Every test sees an empty DMI folder, so preemption watching (`auto`) never polls a cloud.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def pytest_configure(config: pytest.Config) -> None:
    """No test reaches a real cloud metadata server, even on a cloud machine: `auto` preemption
    watching reads an empty DMI folder (`TUNEDECK_DMI_DIR`) unless a test says otherwise."""
    import tempfile

    os.environ["TUNEDECK_DMI_DIR"] = tempfile.mkdtemp(prefix="tunedeck-no-dmi-")


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = os.environ.pop("TUNEDECK_DMI_DIR", None)
    if folder:
        Path(folder).rmdir()


@pytest.fixture
def tunedeck_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "tunedeck-home"
    home.mkdir()
    monkeypatch.setenv("TUNEDECK_HOME", str(home))
    monkeypatch.delenv("TUNEDECK_RUNS", raising=False)
    return home


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo files, built once per session with no download (about 5 s)."""
    home = tmp_path_factory.mktemp("demo-home")
    code = "from runner.demo import ensure_demo; print(ensure_demo())"
    env = {**os.environ, "TUNEDECK_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def demo_home(tunedeck_home: Path, demo_dir: Path) -> Path:
    data = tunedeck_home / "data"
    data.mkdir(exist_ok=True)
    (data / "demo").symlink_to(demo_dir, target_is_directory=True)
    return tunedeck_home


@pytest.fixture
def tunedeck() -> CliRunner:
    """`tunedeck(*args, env=None, timeout=120)`: the CLI as a user runs it, in the current
    environment (with `tunedeck_home` set, in the isolated home)."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "COLUMNS": "120", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "tui.cli", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
        )

    return run
