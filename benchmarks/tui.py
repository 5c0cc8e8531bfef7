"""Benchmark the app in a real terminal (tmux): first paint, idle CPU while monitoring a run,
and the log pane on a multi-GB log (memory, keystroke to screen update).

Each figure is taken on a real `tunedeck` process drawing into a private tmux server, read back
with `tmux capture-pane`; the baseline is the same measurement on a 1 MB log. Run by hand:

    .venv/bin/python benchmarks/tui.py              # 2 GB log, 5 repeats
    .venv/bin/python benchmarks/tui.py --log-gb 0.2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.runs import RunState, now_iso, write_state

TMUX = shutil.which("tmux")
LINE = b"{'loss': 1.2345, 'grad_norm': 0.41, 'learning_rate': 0.00018, 'epoch': 0.92}"


class Term:
    """A private tmux server with one 100x30 window running `command`."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.socket = f"tunedeck-bench-{os.getpid()}-{time.monotonic_ns()}"
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        self.started = time.perf_counter()
        self._tmux(
            "new-session", "-d", "-s", "b", "-x", "100", "-y", "30", f"env {exports} {command}"
        )

    def _tmux(self, *args: str) -> str:
        assert TMUX is not None
        return subprocess.run(
            [TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "b")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "b", *keys)

    def app_pid(self) -> int:
        pane_pid = int(self._tmux("display-message", "-p", "-t", "b", "#{pane_pid}").strip())
        proc = psutil.Process(pane_pid)
        # `env` execs the command, so the pane's process is the app itself.
        return proc.pid

    def wait(self, predicate: Callable[[str], bool], timeout_s: float = 30.0) -> float:
        """Seconds until the screen satisfies `predicate` (polled every 5 ms)."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if predicate(self.screen()):
                return time.perf_counter() - start
            time.sleep(0.005)
        raise TimeoutError(self.screen())

    def close(self) -> None:
        self._tmux("kill-server")


def make_log(path: Path, size_bytes: int) -> None:
    """Numbered lines of a trainer log, written in 4 MB blocks."""
    block_lines = 40_000
    written = 0
    n = 0
    with path.open("wb") as fh:
        while written < size_bytes:
            block = b"".join(b"%010d " % (n + i) + LINE + b"\n" for i in range(block_lines))
            fh.write(block)
            written += len(block)
            n += block_lines


def make_run(root: Path, run_id: str, log_bytes: int) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    write_state(
        run_dir,
        RunState(
            run_id=run_id,
            status="running",
            pid=os.getpid(),  # this script stands for the training: alive while measured
            host=socket.gethostname(),
            started_at=now_iso(),
            segment_started_at=now_iso(),
            step=100,
            max_steps=1000,
            price_usd_per_h=2.69,
        ),
    )
    with (run_dir / "metrics.jsonl").open("w") as fh:
        for step in range(1, 101):
            fh.write(f'{{"step": {step}, "loss": {3 - step / 100:.4f}, "learning_rate": 2e-4}}\n')
    make_log(run_dir / "train.log", log_bytes)
    return run_dir


def env_for(home: Path) -> dict[str, str]:
    return {"TUNEDECK_HOME": str(home), "TERM": "xterm-256color", "PATH": os.environ["PATH"]}


def first_paint(home: Path, repeats: int, command: str | None = None) -> list[float]:
    """Process start to the home screen's title, GPU and host lines on screen. With `command`,
    the same for a script that prints those words at once: tmux and Python start-up alone."""
    out = []
    for _ in range(repeats):
        term = Term(command or f"{sys.executable} -m tui.cli", env_for(home))
        try:
            term.wait(lambda s: "tunedeck" in s and ("GPU" in s) and "host" in s)
            out.append(time.perf_counter() - term.started)
        finally:
            term.close()
        time.sleep(0.3)
    return out


# The least a Textual app can do: the baseline the home screen's first paint is compared with.
TEXTUAL_FLOOR = """
from textual.app import App
from textual.widgets import Static


class Floor(App):
    def compose(self):
        yield Static("tunedeck GPU host")


Floor().run()
"""


PHASES_SCRIPT = """
import time
T0 = time.perf_counter()
marks = {}
def mark(name):
    marks[name] = time.perf_counter() - T0
import tui.cli
mark("import tui.cli")
from tui.app import build_app
mark("import textual+app")
app = build_app(None)
from tui.screens.home import HomeScreen
original = HomeScreen.on_mount
def on_mount(self):
    original(self)
    mark("home mounted")
    self.call_after_refresh(lambda: (mark("first frame"), self.app.set_timer(0.2, self.app.exit)))
HomeScreen.on_mount = on_mount
app.run()
open(OUT, "w").write(repr(marks))
"""


def startup_phases(home: Path, repeats: int) -> dict[str, float]:
    """Where start-up time goes: imports, mounting the home screen, the first frame."""
    runs: list[dict[str, float]] = []
    for i in range(repeats):
        out = home.parent / f"phases-{i}.txt"
        script = home.parent / "phases.py"
        script.write_text(f"OUT = {str(out)!r}\n" + PHASES_SCRIPT)
        term = Term(f"{sys.executable} {script}", env_for(home))
        try:
            deadline = time.monotonic() + 20
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            runs.append(eval(out.read_text()))  # a dict literal this script wrote
        finally:
            term.close()
    return {k: med([r[k] for r in runs]) for k in runs[0]}


def idle_cpu(home: Path, runs: Path, run_id: str, seconds: float) -> float:
    """CPU of the app (% of one core) while it monitors a run that is not changing."""
    term = Term(f"{sys.executable} -m tui.cli watch {run_id} --runs-dir {runs}", env_for(home))
    try:
        term.wait(lambda s: run_id in s and "following" in s)
        time.sleep(2.0)  # let start-up work finish
        proc = psutil.Process(term.app_pid())
        before = proc.cpu_times()
        time.sleep(seconds)
        after = proc.cpu_times()
        used = (after.user - before.user) + (after.system - before.system)
        return used / seconds * 100
    finally:
        term.close()


def log_pane(
    home: Path, runs: Path, run_id: str, last_line: str, repeats: int
) -> dict[str, list[float]]:
    """Open the monitor on a log; RSS after opening, and keystroke-to-screen times."""
    figures: dict[str, list[float]] = {
        k: [] for k in ("open_s", "rss_mib", "home_s", "pageup_s", "end_s")
    }
    for _ in range(repeats):
        term = Term(f"{sys.executable} -m tui.cli watch {run_id} --runs-dir {runs}", env_for(home))
        try:
            figures["open_s"].append(term.wait(lambda s: last_line in s))
            time.sleep(0.5)
            figures["rss_mib"].append(psutil.Process(term.app_pid()).memory_info().rss / 2**20)
            started = time.perf_counter()
            term.keys("Home")  # jump to the first line of the file
            term.wait(lambda s: "0000000000 {" in s)
            figures["home_s"].append(time.perf_counter() - started)
            started = time.perf_counter()
            term.keys("End")  # back to following the end
            term.wait(lambda s: last_line in s and "following" in s)
            figures["end_s"].append(time.perf_counter() - started)
            started = time.perf_counter()
            term.keys("PageUp")
            term.wait(lambda s: "scrolled" in s)
            figures["pageup_s"].append(time.perf_counter() - started)
            rss = psutil.Process(term.app_pid()).memory_info().rss / 2**20
            figures["rss_mib"][-1] = max(figures["rss_mib"][-1], rss)
        finally:
            term.close()
        time.sleep(0.3)
    return figures


def search_far(home: Path, runs: Path, run_id: str, needle: str) -> float:
    """Search from the end for a line near the start: the whole file is scanned backwards."""
    term = Term(f"{sys.executable} -m tui.cli watch {run_id} --runs-dir {runs}", env_for(home))
    try:
        term.wait(lambda s: "following" in s)
        term.keys("/")
        term.wait(lambda s: "search the log" in s)
        term.keys("-l", needle)
        term.wait(lambda s: needle in s)
        started = time.perf_counter()
        term.keys("Enter")
        term.wait(lambda s: f"/{needle.strip()}" in s, timeout_s=300)
        return time.perf_counter() - started
    finally:
        term.close()


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log-gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--paint-only", action="store_true", help="only the start-up figures")
    args = parser.parse_args()
    if TMUX is None:
        sys.exit("tmux is needed: apt-get install tmux")
    work = Path(tempfile.mkdtemp(prefix="tunedeck-bench-"))
    try:
        home = work / "home"
        runs = work / "runs"
        paint = first_paint(home, args.repeats)  # before the big file is written
        bare = first_paint(
            home,
            args.repeats,
            f"{sys.executable} -c 'import time; print(\"tunedeck GPU host\"); time.sleep(5)'",
        )
        floor_script = work / "textual_floor.py"
        floor_script.write_text(TEXTUAL_FLOOR)
        floor = first_paint(home, args.repeats, f"{sys.executable} {floor_script}")
        print(
            f"first paint (process start -> home screen drawn): median {med(paint):.3f} s "
            f"(min {min(paint):.3f}, max {max(paint):.3f}, n={len(paint)}); a bare python "
            f"printing the same words: {med(bare):.3f} s; the app's own share "
            f"{med(paint) - med(bare):.3f} s"
        )
        print(
            f"Textual's floor (an App with one Static showing the same words): median "
            f"{med(floor):.3f} s (min {min(floor):.3f}); tunedeck / floor "
            f"{med(paint) / med(floor):.2f}"
        )
        phases = startup_phases(home, args.repeats)
        print("start-up phases, in the process (median s since the script's first line):")
        print("  " + "  ".join(f"{name} {value:.3f}" for name, value in phases.items()))
        if args.paint_only:
            return
        big_bytes = int(args.log_gb * 1024**3)
        lines_per_block = 40_000
        line_bytes = len(LINE) + 12
        t0 = time.perf_counter()
        make_run(runs, "big", big_bytes)
        made_s = time.perf_counter() - t0
        make_run(runs, "small", 1024**2)
        size_big = (runs / "big" / "train.log").stat().st_size
        size_small = (runs / "small" / "train.log").stat().st_size
        last_big = f"{size_big // line_bytes - 1:010d}"
        last_small = f"{size_small // line_bytes - 1:010d}"
        _ = lines_per_block
        print(
            f"logs: {size_big / 1024**3:.2f} GiB (written in {made_s:.1f} s), {size_small / 2**20:.1f} MiB"
        )

        cpu = idle_cpu(home, runs, "small", args.idle_s)
        print(
            f"idle CPU while monitoring a quiet run: {cpu:.1f} % of one core over {args.idle_s:.0f} s"
        )

        small = log_pane(home, runs, "small", last_small, args.repeats)
        big = log_pane(home, runs, "big", last_big, args.repeats)
        print(f"{'log pane':<28}{'1 MiB log':>12}{f'{args.log_gb:g} GiB log':>14}{'ratio':>8}")
        for key, label in (
            ("open_s", "open to last line (s)"),
            ("rss_mib", "app RSS (MiB)"),
            ("home_s", "Home: first line (s)"),
            ("end_s", "End: follow again (s)"),
            ("pageup_s", "PageUp: scroll back (s)"),
        ):
            a, b = med(small[key]), med(big[key])
            print(f"{label:<28}{a:>12.3f}{b:>14.3f}{b / a if a else float('nan'):>8.2f}")
        needle = f"{40:010d}"
        far = search_far(home, runs, "big", needle)
        print(
            f"search from the end for line 40 of the {args.log_gb:g} GiB log: {far:.2f} s "
            "(a worker scans backwards; the screen keeps answering)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
