"""The first minute on a machine with no runs and no GPU: the home screen offers the demo on enter,
builds its files in a process of its own while the screen keeps drawing, launches it and opens
the monitor; the new-run screen builds them too instead of refusing. Real builds, real runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_nvml import FakeNvml
from test_tui_helpers import make_app, screen_text, shows, wait_for

from runner.demo import demo_ready
from runner.runs import RunStore, read_state
from tui.screens.launch import LaunchScreen
from tui.screens.monitor import MonitorScreen

pytestmark = pytest.mark.slow

BUILD_S = 300  # a generous bound for building the demo and starting its run on a loaded box


def stop_all(root: Path) -> None:
    store = RunStore(root)
    for summary in store.list():
        if summary.state.status in ("running", "stopping"):
            store.stop(summary.run_id, now=True)


def demo_line(app) -> str:  # type: ignore[no-untyped-def]
    return str(app.screen.query_one("#demo-line").render())


@pytest.mark.asyncio
async def test_enter_on_an_empty_home_builds_and_runs_the_demo(tunedeck_home: Path) -> None:
    root = tunedeck_home / "runs"
    assert not demo_ready()
    app = make_app(FakeNvml([]), root, store=RunStore(root))
    seen: set[str] = set()

    def building_or_watching() -> bool:
        if isinstance(app.screen, MonitorScreen):
            return True
        line = demo_line(app)
        if "building" in line:
            seen.add(line.split("…")[0])  # what it is doing, without the seconds
        return False

    try:
        async with app.run_test(size=(100, 30)) as pilot:
            assert await shows(pilot, "no runs yet", "press enter to try the demo")
            await pilot.press("enter")
            assert await wait_for(pilot, building_or_watching, timeout_s=BUILD_S), demo_line(app)
            # The screen drew the build's steps as they came: the build never held it up.
            assert len(seen) >= 2, seen
            assert demo_ready()
            (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
            assert app.screen.run == run_dir.name
            state = read_state(run_dir)
            assert state is not None and state.preset_name == "demo"
            # The monitor follows the run: its steps show up.
            assert await wait_for(
                pilot, lambda: (read_state(run_dir).step or 0) >= 1, timeout_s=BUILD_S
            )
            assert await shows(pilot, f"{run_dir.name}  ", "step ", timeout_s=10)
    finally:
        stop_all(root)


@pytest.mark.asyncio
async def test_a_demo_that_cannot_be_built_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the tunedeck home should be\n")
    monkeypatch.setenv("TUNEDECK_HOME", str(blocker / "home"))
    root = blocker / "home" / "runs"
    app = make_app(FakeNvml([]), root, store=RunStore(root))
    async with app.run_test(size=(100, 30)) as pilot:
        assert await shows(pilot, "press enter to try the demo")
        await pilot.press("enter")
        assert await wait_for(
            pilot, lambda: "could not start" in demo_line(app), timeout_s=BUILD_S
        ), demo_line(app)
        assert "cannot write the demo files" in demo_line(app)
        assert "Not a directory" in demo_line(app)
        assert "press enter to try again" in demo_line(app)
        assert not isinstance(app.screen, MonitorScreen)
        # The runs list's next refresh (every 2 s) leaves the reason on screen.
        home = app.screen
        home.post_message(home.RunsLoaded([], None))
        await pilot.pause()
        await pilot.pause()
        assert "cannot write the demo files" in demo_line(app)


@pytest.mark.asyncio
async def test_new_run_with_the_demo_preset_builds_the_files(tunedeck_home: Path) -> None:
    root = tunedeck_home / "runs"
    assert not demo_ready()
    app = make_app(FakeNvml([]), root, store=RunStore(root))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        assert await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen))
        assert await shows(pilot, "building the demo model and data", timeout_s=30)
        assert await shows(pilot, "ready · enter launches", timeout_s=BUILD_S), screen_text(app)
        assert demo_ready()
        text = screen_text(app)
        assert "tunedeck demo` once" not in text and "problem:" not in text
        # The model path as it is on this machine, not the preset's `{data_dir}` template.
        preflight = str(app.screen.query_one("#launch-preflight").render())
        assert "{data_dir}" not in preflight
        assert f"lora · {tunedeck_home / 'data' / 'demo' / 'model'}\n" in preflight


def test_run_demo_command_builds_the_files_and_presets_show_real_paths(
    tunedeck_home: Path, tunedeck
) -> None:  # type: ignore[no-untyped-def]
    import json

    listed = tunedeck("presets", env={"COLUMNS": "300"})
    assert listed.returncode == 0, listed.stderr
    assert "{data_dir}" not in listed.stdout
    assert "/data/demo/model" in listed.stdout

    root = tunedeck_home / "runs"
    try:
        out = tunedeck("run", "demo", "--json", "--runs-dir", str(root), timeout=BUILD_S)
        assert out.returncode == 0, out.stderr
        assert "tunedeck demo` once" not in out.stderr
        assert demo_ready()
        run_dir = Path(json.loads(out.stdout)["run_dir"])
        assert read_state(run_dir) is not None
    finally:
        stop_all(root)
