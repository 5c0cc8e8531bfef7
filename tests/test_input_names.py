"""Names (presets, runs, hub ids) are checked whole: a trailing newline or space is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CliRunner

from presets import PresetError, derive_preset, validate
from runner.data.scan import looks_like_hub_id
from runner.launch import _new_run_dir
from runner.runs import RunError

BASE = {"model": "m", "dataset": {"path": "d.jsonl"}}


@pytest.mark.parametrize("name", ["demo\n", "demo ", " demo", "demo\r\n"])
def test_a_preset_name_with_a_line_break_or_space_is_refused(name: str) -> None:
    with pytest.raises(PresetError) as err:
        validate({"name": name, **BASE}, "p.yaml")
    (line,) = err.value.lines
    assert line.startswith("p.yaml: name: must not start or end with a space or a line break")
    assert repr(name) in line


def test_presets_new_refuses_a_name_ending_in_a_newline(
    tunedeck: CliRunner, tunedeck_home: Path
) -> None:
    out = tunedeck("presets", "new", "mine\n", "--from", "demo")
    assert out.returncode == 2
    assert "name: must not start or end with a space or a line break, got 'mine\\n'" in out.stderr
    assert not (tunedeck_home / "config" / "presets").exists()
    with pytest.raises(PresetError):
        derive_preset("mine\n", "demo")


def test_a_run_name_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunError) as err:
        _new_run_dir(tmp_path, "demo", "run-1\n")
    assert "--name 'run-1\\n'" in err.value.lines[0]
    assert list(tmp_path.iterdir()) == []
    assert _new_run_dir(tmp_path, "demo", "run-1").name == "run-1"


def test_a_hub_id_ending_in_a_newline_is_not_a_hub_id() -> None:
    assert looks_like_hub_id("org/data")
    assert not looks_like_hub_id("org/data\n")
