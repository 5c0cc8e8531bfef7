"""`tunedeck presets show` prints the resolved preset's YAML whole: verbatim through a pipe, and
with no line cut or broken on an 80-column terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import CliRunner

from presets import load_preset, preset_to_yaml

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def long_preset(tmp_path: Path) -> Path:
    deep = tmp_path / ("d" * 130) / "e"
    path = tmp_path / "long.yaml"
    path.write_text(
        "name: long\n"
        "description: a description with many words that runs well past the width of any "
        "terminal a person would use to read it, and then some more\n"
        f"model: {deep / 'model'}\n"
        f"dataset:\n  path: {deep / 'chat.jsonl'}\n"
        "training: {max_steps: 40}\n"
    )
    return path


def test_show_through_a_pipe_prints_the_resolved_yaml_verbatim(
    tunedeck: CliRunner, tunedeck_home: Path, tmp_path: Path
) -> None:
    path = long_preset(tmp_path)
    out = tunedeck("presets", "show", str(path), env={"COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    # The command prints the resolved preset (defaults filled in): byte for byte what
    # preset_to_yaml gives, and every value of the file is in it unchanged.
    assert out.stdout == preset_to_yaml(load_preset(str(path)))
    printed = yaml.safe_load(out.stdout)
    written = yaml.safe_load(path.read_text())
    for key, value in written.items():
        if isinstance(value, dict):
            assert {k: printed[key][k] for k in value} == value
        else:
            assert printed[key] == value
    assert max(len(line) for line in out.stdout.splitlines()) > 120


def test_show_on_a_narrow_terminal_cuts_no_line(tunedeck_home: Path, tmp_path: Path) -> None:
    path = long_preset(tmp_path)
    leader, follower = os.openpty()
    env = {**os.environ, "COLUMNS": "80", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "presets", "show", str(path)],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    shown = ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")
    assert "\x1b[" in b"".join(chunks).decode(), "expected colour on a terminal"
    # The terminal folds long lines itself; the text sent holds every line whole.
    assert shown.splitlines() == preset_to_yaml(load_preset(str(path))).splitlines()
