"""More things a user can get wrong in a preset, a `--set` value or a flag: each is refused with
a message naming what is wrong, before anything starts, and text from files cannot drive the
terminal."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import CliRunner
from fake_nvml import two_h100s
from test_tui_helpers import make_app, shows, wait_for

from presets import PresetError, load_preset
from presets.store import MAX_PRESET_BYTES, read_yaml
from runner.runs import RunState, RunStore, now_iso, write_state
from tui.widgets.format import log_text, one_line
from tui.widgets.log_pane import LogPane

PRESET = "name: p\nmodel: m\ndataset: {path: d.jsonl}\n"


def test_a_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(PRESET + "training:\n  max_steps: 10\n  learning_rate: 1e-4\n  max_steps: 20\n")
    with pytest.raises(PresetError) as err:
        read_yaml(path)
    (line,) = err.value.lines
    assert line.startswith(f"{path}: line 7, column 3: ")
    assert "duplicate key 'max_steps'; the first is on line 5" in line


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(PRESET + "training: {x: " + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(PresetError) as err:
        read_yaml(path)
    assert "nested more than 64 levels deep" in err.value.lines[0]


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as fh:
        fh.write(PRESET + "description: ")
        fh.write("x" * (MAX_PRESET_BYTES + 1))
    with pytest.raises(PresetError) as err:
        read_yaml(path)
    assert "far too large for a preset" in err.value.lines[0]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("lora.r=true", "lora.r: must be an integer, got True"),
        ("lora.alpha=2.5", "lora.alpha: must be an integer, got 2.5"),
        ("launch.num_gpus=true", "launch.num_gpus: must be an integer, got True"),
        ("price_usd_per_h=yes", "price_usd_per_h: must be a number, got 'yes'"),
        ("lora.dropout=true", "lora.dropout: must be a number, got True"),
    ],
)
def test_a_boolean_is_not_a_number(demo_home: Path, setting: str, expected: str) -> None:
    with pytest.raises(PresetError) as err:
        load_preset("demo", [setting])
    assert any(expected in line for line in err.value.lines), err.value.lines


def test_numbers_still_read_as_numbers(demo_home: Path) -> None:
    preset = load_preset("demo", ["lora.r=32", "lora.dropout=0", "price_usd_per_h=2"])
    assert (preset.lora.r, preset.lora.dropout, preset.price_usd_per_h) == (32, 0.0, 2.0)


@pytest.mark.parametrize("flags", [["--gpu-memory", "inf"], ["--price", "nan"], ["--epochs=-inf"]])
def test_plan_refuses_nan_and_infinity(
    tunedeck: CliRunner, tunedeck_home: Path, flags: list[str]
) -> None:
    out = tunedeck("plan", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "H100", *flags)
    assert out.returncode == 2
    assert "expected a finite number" in out.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--nnodes", "0"], "--nnodes must be 1 or more, got 0"),
        (["--node-rank", "1"], "--node-rank must be from 0 to 0 with --nnodes 1, got 1"),
        (
            ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", "99999"],
            "--master-port must be a TCP port from 1 to 65535, got 99999",
        ),
    ],
)
def test_bad_machine_flags_are_refused_before_a_launch(
    tunedeck: CliRunner, demo_home: Path, tmp_path: Path, flags: list[str], expected: str
) -> None:
    root = tmp_path / "runs"
    out = tunedeck("demo", "--name", "flags", "--runs-dir", str(root), "--json", *flags)
    if out.returncode == 0:  # launched: stop it before failing
        tunedeck("stop", "flags", "--now", "--runs-dir", str(root))
    assert out.returncode == 2, out.stdout
    assert expected in out.stderr
    assert not (root / "flags").exists()


def test_runs_dir_that_is_a_file(tunedeck: CliRunner, tunedeck_home: Path, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "runs.txt"
    not_a_folder.write_text("x")
    out = tunedeck("runs", "--runs-dir", str(not_a_folder))
    assert out.returncode == 2
    assert f"runs folder {not_a_folder}: not a folder" in out.stderr


# ---------------------------------------------------------------- control characters

NASTY = "\x1b]0;pwned\x07\x1b[2J\x1b[31mboom\rfake\nline"


def failed_run(root: Path, run_id: str, reason: str, log: str = "") -> None:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    write_state(
        run_dir,
        RunState(
            run_id=run_id,
            status="failed",
            host=socket.gethostname(),
            started_at=now_iso(),
            ended_at=now_iso(),
            failure_reason=reason,
        ),
    )
    (run_dir / "train.log").write_text(log)


def test_control_characters_are_shown_as_escapes() -> None:
    assert one_line(NASTY) == "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mboom\\rfake\\nline"
    assert log_text("\x1b[31mred\x1b[0m and \x1b]0;title\x07plain\x9b") == "red and plain\\x9b"


def test_runs_does_not_pass_escape_sequences_to_the_terminal(
    tunedeck: CliRunner, tunedeck_home: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    failed_run(root, "nasty", NASTY)
    out = tunedeck("runs", "--runs-dir", str(root))
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout and "\r" not in out.stdout
    assert "failed: \\x1b]0;pwned\\x07" in out.stdout
    data = json.loads(tunedeck("runs", "--json", "--runs-dir", str(root)).stdout)
    assert data["runs"][0]["state"]["failure_reason"] == NASTY  # JSON keeps the text itself


@pytest.mark.asyncio
async def test_the_monitor_shows_escapes_and_drops_log_colours(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    failed_run(root, "nasty", "\x1b[2Jboom", log="\x1b[32mgreen line\x1b[0m\nplain line\n")
    app = make_app(two_h100s(), root, store=RunStore(root), watch_run="nasty")
    async with app.run_test(size=(110, 30)) as pilot:
        assert await shows(pilot, "failed: \\x1b[2Jboom", "green line", "plain line")
        pane = app.screen.query_one(LogPane)
        assert await wait_for(pilot, lambda: "\x1b" not in pane.render().plain)
