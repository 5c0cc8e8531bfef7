"""`tunedeck watch` refuses an unknown run plainly, before opening the app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_watch_an_unknown_run_says_so(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "real-run").mkdir(parents=True)
    (runs / "real-run" / "state.json").write_text('{"run_id": "real-run"}')
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "watch", "nope", "--runs-dir", str(runs)],
        capture_output=True,
        text=True,
        env={**os.environ, "TUNEDECK_HOME": str(tmp_path / "home")},
        timeout=60,
    )
    assert out.returncode == 2
    assert "nope: no such run" in out.stderr and "real-run" in out.stderr
    assert "Traceback" not in out.stderr
