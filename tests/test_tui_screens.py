"""Planner, preset editor and launch screens driven by keys, over the real planner, the real
preset store (under a temporary TUNEDECK_HOME) and the real runner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_nvml import FakeGpu, FakeNvml, two_h100s
from test_tui_helpers import make_app, screen_text, shows, wait_for

from planner import PlanRequest, plan
from presets import load_preset
from runner.runs import RunStore, read_state
from tui.screens.monitor import MonitorScreen
from tui.screens.planner import PlannerScreen
from tui.screens.presets import PresetsScreen
from tui.widgets.preset_form import PresetForm

pytestmark = pytest.mark.asyncio


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEDECK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNEDECK_RUNS", raising=False)
    return tmp_path / "home"


async def replace_text(pilot, widget_id: str, text: str) -> None:
    """Focus an input, clear it and type `text` key by key, as a user does."""
    widget = pilot.app.screen.query_one(f"#{widget_id}")
    widget.focus()
    await pilot.pause()
    await pilot.press("end", *["backspace"] * (len(widget.value) + 1), *text)


async def test_planner_updates_as_you_type(home: Path) -> None:
    # One 24 GB card: full fine-tuning of an 8B model cannot fit, so a fix is offered.
    nvml = FakeNvml(
        [FakeGpu(name="NVIDIA GeForce RTX 4090", total_gib=23.99, compute_capability=(8, 9))]
    )
    app = make_app(nvml, home / "runs", plan_fn=plan)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.telemetry is not None)
        await pilot.press("p")
        assert isinstance(app.screen, PlannerScreen)
        assert await wait_for(pilot, lambda: "does not fit" in screen_text(app), timeout_s=5)
        screen = app.screen
        before = screen.report
        assert before is not None and before.option("full").fits is False
        assert "fix:" in screen_text(app)
        lora_before = before.option("lora").device_peak_gib

        await replace_text(pilot, "seq-len", "8192")
        assert await wait_for(
            pilot, lambda: screen.report is not before and screen.report.request.seq_len == 8192
        )
        after = screen.report
        # The screen shows what the planner computes for the same request: the request's
        # own defaults, the detected card and the data size the form assumes.
        expected = plan(
            PlanRequest(
                model="meta-llama/Llama-3.1-8B",
                gpu="NVIDIA GeForce RTX 4090",
                gpu_memory_gib=after.request.gpu_memory_gib,
                seq_len=8192,
                examples=12000,
                avg_tokens=780,
            )
        )
        lora_after = after.option("lora").device_peak_gib
        assert lora_after == pytest.approx(expected.option("lora").device_peak_gib)
        assert lora_after > lora_before
        assert await wait_for(pilot, lambda: f"{lora_after:6.1f} GiB" in screen_text(app))

        # A bad value is named, and the last good plan stays on screen.
        await replace_text(pilot, "model", "no/such-model-anywhere")
        assert await wait_for(pilot, lambda: "no/such-model-anywhere" in screen_text(app))
        assert await wait_for(
            pilot, lambda: "model" in str(app.screen.query_one("#planner-problems").render())
        )


async def test_use_this_plan_opens_the_editor_with_a_valid_preset(home: Path) -> None:
    app = make_app(two_h100s(), home / "runs", plan_fn=plan)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("p")
        assert await wait_for(pilot, lambda: app.screen.report is not None, timeout_s=5)
        recommended = app.screen.report.recommended
        await pilot.press("ctrl+u")
        assert await wait_for(pilot, lambda: isinstance(app.screen, PresetsScreen))
        editor = app.screen
        assert await wait_for(pilot, lambda: editor.preset is not None)
        assert editor.preset.model == "meta-llama/Llama-3.1-8B"
        assert editor.preset.method == recommended
        assert editor.preset.training["max_length"] == 2048


async def test_editor_shows_errors_inline_and_saves_a_user_preset(home: Path) -> None:
    app = make_app(two_h100s(), home / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("e")
        assert isinstance(app.screen, PresetsScreen)
        editor = app.screen
        assert await wait_for(
            pilot, lambda: editor.preset is not None and editor.preset.name == "demo"
        )
        form = editor.query_one(PresetForm)
        # Help comes from the schema's field docstrings.
        assert "Rank of the adapter matrices" in screen_text(app) or any(
            "Rank of the adapter matrices" in str(s.render()) for s in form.query(".form-help")
        )

        await replace_text(pilot, "field-lora--r", "0")
        error = form.query_one("#field-lora--r-error")
        assert await wait_for(
            pilot, lambda: "must be a positive integer, got 0" in str(error.render())
        )
        assert error.display
        assert editor.preset is None
        assert "1 problem" in str(editor.query_one("#presets-status").render())

        # Saving is refused while a field is wrong; nothing is written.
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        assert not (home / "config" / "presets").exists()

        await replace_text(pilot, "field-lora--r", "32")
        # The preset is rebuilt and the field's message hidden by the same change; under load
        # the two may be drawn a frame apart.
        assert await wait_for(pilot, lambda: editor.preset is not None and not error.display)

        # A shipped name is never overwritten.
        await pilot.press("ctrl+s")
        assert await wait_for(
            pilot, lambda: "never overwritten" in str(editor.query_one("#presets-status").render())
        )
        assert not (home / "config" / "presets" / "demo.yaml").exists()

        await replace_text(pilot, "field-name", "my-demo")
        assert await wait_for(
            pilot, lambda: editor.preset is not None and editor.preset.name == "my-demo"
        )
        await pilot.press("ctrl+s")
        saved = home / "config" / "presets" / "my-demo.yaml"
        assert await wait_for(pilot, saved.exists)
        loaded = load_preset("my-demo")
        assert loaded.lora.r == 32 and loaded.model == "{data_dir}/demo/model"

        # The resolved YAML view shows every field, defaults included.
        await pilot.press("ctrl+y")
        assert await shows(pilot, "double_quant: true", "r: 32")


async def test_unknown_training_argument_is_shown_under_training(home: Path) -> None:
    app = make_app(two_h100s(), home / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("e")
        editor = app.screen
        assert await wait_for(pilot, lambda: editor.preset is not None)
        area = editor.query_one("#field-training")
        area.text = area.text + "learning_rat: 0.1\n"
        error = editor.query_one("#field-training-error")
        assert await wait_for(pilot, lambda: "learning_rat" in str(error.render()))
        assert "learning_rate" in str(error.render())  # the suggestion


async def test_launch_creates_a_run_folder_then_stop_and_resume_from_the_monitor(
    demo_home: Path,
) -> None:
    from presets import derive_preset, save_user_preset

    home = demo_home  # the demo model and data, built once per session (conftest)
    # The demo, long enough to be stopped and resumed while it trains.
    save_user_preset(
        derive_preset("demo-long", "demo", ["training.max_steps=3000", "training.save_steps=5"])
    )
    root = home / "runs"
    store = RunStore(root)
    app = make_app(FakeNvml([]), root, store=store)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("n")
            # Each preflight builds TRL's config in a child process (importing the training
            # stack): tens of seconds on a loaded machine.
            assert await wait_for(pilot, lambda: "ready" in screen_text(app), timeout_s=180)
            await pilot.press("down")  # demo -> demo-long
            assert await shows(pilot, "demo-long", "3000 steps", "ready", timeout_s=180)
            await pilot.press("enter")
            assert await wait_for(
                pilot, lambda: isinstance(app.screen, MonitorScreen), timeout_s=20
            )
            runs = [p for p in root.iterdir() if p.is_dir()]
            assert len(runs) == 1
            run_dir = runs[0]
            assert (run_dir / "config.yaml").is_file()
            state = read_state(run_dir)
            assert state is not None and state.preset_name == "demo-long"
            monitor = app.screen
            assert monitor.run == run_dir.name

            # Stop asks first; n keeps it running.
            assert await wait_for(pilot, lambda: (read_state(run_dir).step or 0) >= 6, timeout_s=60)
            await pilot.press("s")
            assert await shows(pilot, "Stop " + run_dir.name)
            await pilot.press("n")
            await pilot.pause(0.3)
            assert read_state(run_dir).status == "running"
            await pilot.press("s")
            assert await shows(pilot, "Stop " + run_dir.name)
            await pilot.press("y")
            assert await wait_for(
                pilot, lambda: store.get(run_dir.name).state.status == "interrupted", timeout_s=60
            )
            assert await shows(pilot, "interrupted", timeout_s=5)
            stopped_at = read_state(run_dir).step

            # r resumes from the checkpoint written on the way out.
            await pilot.press("r")
            assert await wait_for(pilot, lambda: read_state(run_dir).resumes == 1, timeout_s=20)
            assert await wait_for(
                pilot, lambda: (read_state(run_dir).step or 0) > stopped_at, timeout_s=60
            )
            assert await shows(pilot, "running", timeout_s=5)
    finally:
        for summary in store.list():
            if summary.state.status in ("running", "stopping"):
                store.stop(summary.run_id, now=True)


async def test_a_slow_first_poll_shows_reading_then_the_cards(home: Path) -> None:
    class SlowNvml(FakeNvml):
        def nvmlInit(self) -> None:
            time.sleep(0.6)  # a driver that takes its time to answer
            super().nvmlInit()

    nvml = SlowNvml([FakeGpu(name="NVIDIA L4", total_gib=22.5, compute_capability=(8, 9))])
    app = make_app(nvml, home / "runs", poll_interval_s=3600)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert "reading GPUs" in screen_text(app)
        assert await shows(pilot, "GPU 0", "1x NVIDIA L4")


async def test_home_is_the_first_screen_not_pushed_over_a_blank_one(home: Path) -> None:
    # Pushing it over Textual's default screen drew a blank frame first (about 0.1 s later to
    # a full home screen, measured in benchmarks/tui.py).
    from tui.screens.home import HomeScreen

    app = make_app(two_h100s(), home / "runs", poll_interval_s=3600)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert len(app.screen_stack) == 1
        assert isinstance(app.screen, HomeScreen)
        assert await shows(pilot, "GPU 1", "host")
