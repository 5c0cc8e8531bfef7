"""Importing the app, the planner, the presets or the runner must not load the training stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


@pytest.mark.parametrize(
    "modules",
    [
        ["presets"],
        ["planner"],
        ["runner", "runner.gpu", "runner.host"],
        ["tui", "tui.cli"],
        ["tui.app"],
    ],
)
def test_no_training_stack_on_import(modules: list[str]) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_package_module_imports_light() -> None:
    """Walk every module of the four packages (the training entry point excepted)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "skip = {'runner.train'}\n"
        "done = []\n"
        "for pkg in ('presets', 'planner', 'runner', 'tui'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        if info.name in skip or info.name.startswith('runner.train_'):\n"
        "            continue\n"
        "        importlib.import_module(info.name)\n"
        "        done.append(info.name)\n"
        f"print(json.dumps([len(done), sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert count > 5
    assert heavy == []
