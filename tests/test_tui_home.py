"""Home screen: GPU cards from a fake NVML, the host line, no-GPU text, live updates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_nvml import FakeGpu, FakeNvml, no_driver, two_h100s
from test_tui_helpers import make_app, screen_text, shows, wait_for

pytestmark = pytest.mark.asyncio


async def test_home_shows_each_gpu_and_the_host(tmp_path: Path) -> None:
    app = make_app(two_h100s(), tmp_path / "runs", poll_interval_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await shows(
            pilot,
            "GPU 1",
            "GPU 0  NVIDIA H100 80GB HBM3",
            "58.2 / 79.6 GiB",
            "97 %",
            "71 °C",
            "612 W",
            "idle",  # GPU 1 runs nothing
            "gpu-box-7",
            "64 cores",
            "412/503 GiB free",
        )


async def test_home_updates_live_and_survives_nvml_trouble(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(used_gib=1.0, util_pct=5), FakeGpu(name="NVIDIA A100-SXM4-80GB")])
    app = make_app(nvml, tmp_path / "runs", poll_interval_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: "1.0 / 79.6 GiB" in screen_text(app))
        nvml.gpus[0].used_gib = 42.0
        nvml.gpus[0].util_pct = 88
        assert await shows(pilot, "42.0 / 79.6 GiB", "88 %")
        # Errors in the middle of polls: the field reads unknown, the app goes on. The errors
        # last until the screen has shown them (one failed poll is redrawn within 0.1 s, too
        # briefly to be sure of seeing it), then the driver recovers.
        nvml.fail("nvmlDeviceGetMemoryInfo", times=1_000_000)
        assert await wait_for(pilot, lambda: "- / - GiB" in screen_text(app))
        nvml.fail_next.pop("nvmlDeviceGetMemoryInfo", None)
        assert await wait_for(pilot, lambda: "42.0 / 79.6 GiB" in screen_text(app))
        # A GPU that falls off the bus disappears from the screen.
        nvml.lose(1)
        assert await wait_for(pilot, lambda: "A100" not in screen_text(app))
        assert "GPU 0" in screen_text(app)


async def test_home_without_a_gpu_says_so(tmp_path: Path) -> None:
    app = make_app(no_driver(), tmp_path / "runs", poll_interval_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        assert await wait_for(pilot, lambda: "no NVIDIA GPU found" in screen_text(app))
        assert "GPU 0" not in screen_text(app)


async def test_a_slow_nvml_never_blocks_the_screen(tmp_path: Path) -> None:
    nvml = two_h100s()
    app = make_app(nvml, tmp_path / "runs", poll_interval_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: "GPU 1" in screen_text(app))
        nvml.delay_s = 30.0  # a driver that hangs: each NVML call now takes 30 s
        await pilot.pause(0.5)  # the poller is now stuck inside a call
        try:
            started = time.monotonic()
            await pilot.press("e")  # the UI still answers keys and draws
            assert await wait_for(pilot, lambda: "presets" in screen_text(app), timeout_s=10)
            # Far less than one hung call: the UI never waited on NVML.
            assert time.monotonic() - started < 5.0
            assert "GPU" not in screen_text(app)  # the preset editor replaced home
        finally:
            nvml.release()


async def test_eight_gpus_fit_in_compact_cards(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(used_gib=10.0 * i, util_pct=10 * i) for i in range(8)])
    app = make_app(nvml, tmp_path / "runs", poll_interval_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await shows(pilot, "GPU 0", "GPU 7", "70.0 / 79.6 GiB", "70 %")
        assert "Runs" in screen_text(app)  # the runs list keeps its place below
