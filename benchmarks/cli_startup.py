"""Start-up time of the headless commands: wall and CPU time of real `tunedeck` processes.

Each command runs `--repeats` times; with `--baseline REF` the same commands also run from a
checkout of an older commit (a temporary `git worktree`, put first on PYTHONPATH), alternating
with the current tree run by run, so both see the same load. Prints medians and the ratio
current / baseline. Run by hand:

    .venv/bin/python benchmarks/cli_startup.py --repeats 15
    .venv/bin/python benchmarks/cli_startup.py --repeats 15 --baseline 0422046
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS: list[list[str]] = [
    ["--help"],
    ["--version"],
    ["plan", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "H100", "--json"],
    ["plan", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "H100"],
    ["gpus", "--json"],
    ["presets", "--json"],
    ["runs", "--json"],
]


def run_once(tree: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, user+sys CPU s) of one `python -m tui.cli ARGS` started in `tree`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}:\n{out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--baseline", help="git ref to compare against, run side by side")
    a = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tunedeck-cli-bench-"))
    env = {**os.environ, "TUNEDECK_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("TUNEDECK_RUNS", None)
    trees = {"current": ROOT}
    baseline_dir = work / "baseline"
    if a.baseline:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_dir), a.baseline],
            check=True,
            capture_output=True,
        )
        trees["baseline"] = baseline_dir
    try:
        print(f"load average at start: {os.getloadavg()[0]:.2f}; {a.repeats} runs each")
        header = (
            f"{'command':58s} {'tree':9s} {'wall median':>11s} {'wall min':>9s} {'CPU median':>10s}"
        )
        print(header)
        for args in COMMANDS:
            walls: dict[str, list[float]] = {k: [] for k in trees}
            cpus: dict[str, list[float]] = {k: [] for k in trees}
            run_once(ROOT, args, env)  # warm the file cache and the .pyc files
            if a.baseline:
                run_once(baseline_dir, args, env)
            for i in range(a.repeats):
                order = list(trees) if i % 2 == 0 else list(reversed(trees))
                for name in order:
                    wall, cpu = run_once(trees[name], args, env)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
            label = " ".join(args)[:58]
            for name in trees:
                print(
                    f"{label:58s} {name:9s} {statistics.median(walls[name]):11.3f} "
                    f"{min(walls[name]):9.3f} {statistics.median(cpus[name]):10.3f}"
                )
            if a.baseline:
                ratio = statistics.median(walls["current"]) / statistics.median(walls["baseline"])
                print(f"{'':58s} {'ratio':9s} {ratio:11.2f}")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        if a.baseline:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_dir)],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
