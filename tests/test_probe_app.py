"""The app's probe view: ctrl+p on the preset editor runs the real probe of the preset in a
worker and shows planned against probed, judged against the (fake) GPU the app sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_nvml import FakeGpu, FakeNvml
from test_tui_helpers import make_app, screen_text, wait_for

from runner.probe import PROBE_FILE
from tui.screens.presets import PresetsScreen
from tui.screens.probe import ProbeScreen

pytestmark = pytest.mark.asyncio


async def test_probe_screen_shows_planned_against_probed(demo_home: Path) -> None:
    nvml = FakeNvml([FakeGpu("NVIDIA H100 80GB HBM3", total_gib=79.6)])
    app = make_app(nvml, demo_home / "runs")
    async with app.run_test(size=(110, 34)) as pilot:
        assert await wait_for(pilot, lambda: app.telemetry is not None)
        await pilot.press("e")
        assert isinstance(app.screen, PresetsScreen)
        editor = app.screen
        assert await wait_for(pilot, lambda: editor.preset is not None, timeout_s=20)
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, ProbeScreen)
        screen = app.screen
        # A real probe process: imports, the trainer, two micro-batches on a loaded CPU.
        assert await wait_for(pilot, lambda: screen.result is not None, timeout_s=180), screen_text(
            app
        )
        result = screen.result
        assert result is not None
        text = screen_text(app)
        assert "planned" in text and "probed" in text and "peak memory" in text
        # Judged against the GPU the app sees, with the planner's headroom.
        assert result["gpu_memory_gib"] == pytest.approx(79.6)
        assert result["fits"] is True and "fits:" in text
        assert f"largest micro-batch that fits: {result['max_micro_batch']}" in text
        assert f"{result['tokens_per_s']:,.0f}" in text
        saved = json.loads((Path(result["probe_dir"]) / PROBE_FILE).read_text())
        assert saved == result
        await pilot.press("escape")
        assert isinstance(app.screen, PresetsScreen)
