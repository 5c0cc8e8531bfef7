"""Text from users and files (run names, failure reasons, preset values, paths, search text) is
printed as it is by the commands and the app, never read as Rich or Textual markup."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import CliRunner
from fake_nvml import FakeGpu, FakeNvml, two_h100s
from test_tui_helpers import make_app, screen_text, shows, wait_for

from runner.runs import RunState, RunStore, now_iso, write_state
from tui.widgets.log_pane import LogPane

BAD = "[/x] boom [bold]"

# A tiny Llama config: enough for the planner, which reads nothing else of a local model.
TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def make_failed_run(root: Path, run_id: str, reason: str) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    write_state(
        run_dir,
        RunState(
            run_id=run_id,
            status="failed",
            host=socket.gethostname(),
            started_at=now_iso(),
            segment_started_at=now_iso(),
            ended_at=now_iso(),
            step=3,
            max_steps=10,
            failure_reason=reason,
        ),
    )
    (run_dir / "train.log").write_text(f"step 1\n{reason}\nstep 3\n")
    return run_dir


def make_completed_run(root: Path, run_id: str) -> None:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    write_state(
        run_dir,
        RunState(run_id=run_id, status="completed", started_at=now_iso(), step=10, max_steps=10),
    )


def test_runs_lists_a_failure_reason_with_brackets_as_it_is(
    tunedeck: CliRunner, tunedeck_home: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    make_failed_run(root, "broken-1", BAD)
    make_completed_run(root, "fine-1")
    out = tunedeck("runs", "--runs-dir", str(root))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert f"failed: {BAD}" in out.stdout
    assert "fine-1" in out.stdout and "completed" in out.stdout


@pytest.fixture
def bracket_preset(tunedeck_home: Path, tmp_path: Path) -> Path:
    """A user preset whose description, model folder and dataset path hold markup-like text."""
    model = tmp_path / "[/x]models" / "[bold]tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    folder = tunedeck_home / "config" / "presets"
    folder.mkdir(parents=True)
    path = folder / "brackets.yaml"
    path.write_text(
        "name: brackets\n"
        'description: "[/y] for [bold]testing"\n'
        f"model: {json.dumps(str(model))}\n"
        f"dataset: {{path: {json.dumps(str(tmp_path / '[/d]data.jsonl'))}}}\n"
        "training: {max_steps: 5}\n"
    )
    return model


def test_preset_values_with_brackets_print_as_they_are(
    tunedeck: CliRunner, bracket_preset: Path, tmp_path: Path
) -> None:
    # Wide enough for the description column after the long model path.
    listed = tunedeck("presets", env={"COLUMNS": "300"})
    assert listed.returncode == 0, listed.stderr
    assert "brackets (user)" in listed.stdout
    assert "[/y] for [bold]testing" in listed.stdout

    shown = tunedeck("presets", "show", "brackets")
    assert shown.returncode == 0, shown.stderr
    assert str(bracket_preset) in shown.stdout

    planned = tunedeck("plan", "brackets")
    assert planned.returncode == 0, planned.stderr
    assert f"model {bracket_preset}" in planned.stdout

    # The launch is refused (no data there); the message names the path as it is.
    launched = tunedeck("run", "brackets", "--runs-dir", str(tmp_path / "runs"))
    assert launched.returncode == 2, launched.stdout
    assert "Traceback" not in launched.stderr
    assert str(tmp_path / "[/d]data.jsonl") in launched.stderr


def test_bad_names_with_brackets_are_named_as_they_are(
    tunedeck: CliRunner, tunedeck_home: Path, tmp_path: Path
) -> None:
    missing = tunedeck("presets", "show", "[/x]")
    assert missing.returncode == 2
    assert "error: [/x]: no such preset file" in missing.stderr

    bad_name = tmp_path / "p.yaml"
    bad_name.write_text('name: "[/x]"\nmodel: m\ndataset: {path: d.jsonl}\n')
    out = tunedeck("presets", "show", str(bad_name))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "got '[/x]'" in out.stderr

    wrong_set = tunedeck("presets", "show", "demo", "--set", "[/x]")
    assert wrong_set.returncode == 2
    assert "--set '[/x]'" in wrong_set.stderr

    planned = tunedeck("plan", "--model", "[bold]no/such")
    assert planned.returncode == 2
    assert "Traceback" not in planned.stderr
    assert "[bold]no/such" in planned.stderr


def test_data_check_of_a_path_with_brackets(
    tunedeck: CliRunner, tunedeck_home: Path, tmp_path: Path
) -> None:
    data = tmp_path / "[bold]chat.jsonl"
    data.write_text('{"text": "hello [/x] there"}\n{"text": [1]}\n')
    out = tunedeck("data", "check", str(data))
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 1
    assert "[bold]chat.jsonl" in out.stdout
    missing = tunedeck("data", "check", str(tmp_path / "[/x]" / "none.jsonl"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "[/x]/none.jsonl" in missing.stderr


@pytest.mark.asyncio
async def test_app_shows_a_failed_run_with_brackets_and_searches_them(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_failed_run(root, "broken-1", BAD)
    make_completed_run(root, "fine-1")
    app = make_app(two_h100s(), root, store=RunStore(root))
    async with app.run_test(size=(110, 30), notifications=True) as pilot:
        assert await shows(pilot, "broken-1", "fine-1", "failed")
        app.open_monitor("broken-1")
        assert await shows(pilot, f"failed: {BAD}")  # the reason, in full, under the header
        # Search text is typed by the user and lands in the pane's title and in notices.
        await pilot.press("slash", *"[/x] boom", "enter")
        pane = app.screen.query_one(LogPane)
        assert await wait_for(pilot, lambda: pane.highlight == "[/x] boom")
        assert await shows(pilot, "/[/x] boom")
        await pilot.press("slash", "ctrl+u", *"[/nothing]", "enter")
        assert await shows(pilot, "not found: [/nothing]")
        assert app.is_running


@pytest.mark.asyncio
async def test_gpu_name_with_brackets(tmp_path: Path) -> None:
    app = make_app(FakeNvml([FakeGpu(name="NVIDIA [/x] card")]), tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: "NVIDIA [/x] card" in screen_text(app))
