"""tools/setup_torch.py decides which torch `make` installs, from a fake `nvidia-smi` on PATH and
a fake system Python (this machine has neither a GPU nor a system torch). Decide-only: nothing is
created or installed, nothing touches the network."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "setup_torch.py"

SMI_HEADER = """\
Mon Dec  1 12:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|=========================================+========================+======================|
|   0  NVIDIA A100-SXM4-80GB          On  |   00000000:07:00.0 Off |                    0 |
| N/A   31C    P0             61W /  400W |       1MiB /  81920MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
"""
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class Box:
    """A PATH with (or without) a fake nvidia-smi and a fake system Python."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.python = tmp_path / "system-python"
        self.venv = tmp_path / "venv"
        self.no_torch()

    def driver(self, driver: str, cuda: str) -> None:
        header = SMI_HEADER.format(driver=driver, cuda=cuda)
        # Shell built-ins only: the PATH holds nothing but this folder.
        lines = "".join(f"echo '{line}'\n" for line in header.splitlines())
        executable(self.bin / "nvidia-smi", f"#!/bin/sh\n{lines}")

    def broken_driver(self) -> None:
        executable(self.bin / "nvidia-smi", f'#!/bin/sh\necho "{NO_DRIVER.strip()}"\nexit 9\n')

    def torch(self, version: str, cuda: str | None, available: bool) -> None:
        """The system Python's torch, as the probe would print it."""
        answer = json.dumps({"version": version, "cuda": cuda, "available": available})
        executable(self.python, f"#!/bin/sh\necho '{answer}'\n")

    def no_torch(self) -> None:
        executable(
            self.python,
            "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n",
        )

    def decide(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable, str(SCRIPT), "--dry-run", "--json",
                "--venv", str(self.venv), "--python", str(self.python),
                "--nvml-library", str(self.tmp / "no-libnvidia-ml.so"), *extra,
            ],
            capture_output=True, text=True, timeout=60,
            env={"PATH": str(self.bin), "HOME": str(self.tmp)},
        )  # fmt: skip

    def decision(self, *extra: str) -> dict[str, Any]:
        out = self.decide(*extra)
        assert out.returncode == 0, out.stderr
        assert not self.venv.exists(), "a dry run created the venv"
        return json.loads(out.stdout)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def index(tag: str) -> list[str]:
    return ["torch>=2.4", "--index-url", f"https://download.pytorch.org/whl/{tag}"]


def test_a_working_system_torch_is_used_not_installed(box: Box) -> None:
    box.driver("550.54.14", "12.4")
    box.torch("2.5.1+cu121", "12.1", available=True)
    got = box.decision()
    assert got["choice"] == "system"
    assert got["venv_args"] == ["--system-site-packages"]
    assert got["pip_args"] == []
    assert "2.5.1+cu121" in got["summary"]


@pytest.mark.parametrize(
    ("version", "cuda", "available", "why"),
    [
        ("2.6.0+cu126", "12.6", True, "newer than driver 550.54.14 supports (12.4)"),
        ("2.1.2+cu121", "12.1", True, "older than tunedeck needs (>= 2.4)"),
        ("2.5.1+cpu", None, False, "is a CPU build"),
        ("2.5.1+cu121", "12.1", False, "does not see the GPU"),
    ],
)
def test_an_unusable_system_torch_gives_the_driver_matched_index(
    box: Box, version: str, cuda: str | None, available: bool, why: str
) -> None:
    box.driver("550.54.14", "12.4")
    box.torch(version, cuda, available)
    got = box.decision()
    assert got["choice"] == "cuda"
    assert got["pip_args"] == index("cu124")
    assert got["venv_args"] == []
    assert any(why in reason for reason in got["reasons"]), got["reasons"]


@pytest.mark.parametrize(
    ("driver", "cuda", "tag"),
    [
        ("520.61.05", "11.8", "cu118"),
        ("525.60.13", "12.0", "cu118"),  # 12.1 needs 530.30.02
        ("530.30.02", "12.1", "cu121"),
        ("535.104.05", "12.2", "cu121"),
        ("550.54.14", "12.4", "cu124"),
        ("555.42.02", "12.5", "cu124"),
        ("560.35.03", "12.6", "cu126"),
        ("570.86.10", "12.8", "cu128"),
        ("575.51.03", "12.9", "cu128"),
        ("580.65.06", "13.0", "cu130"),
        ("590.44.01", "13.1", "cu130"),
    ],
)
def test_no_system_torch_picks_the_index_by_driver(
    box: Box, driver: str, cuda: str, tag: str
) -> None:
    box.driver(driver, cuda)
    got = box.decision()
    assert got["choice"] == "cuda"
    assert got["pip_args"] == index(tag)
    assert any(f"wheel index {tag}" in r for r in got["reasons"]), got["reasons"]
    assert any("no torch that imports" in r for r in got["reasons"]), got["reasons"]


def test_a_driver_too_old_for_any_build_says_what_to_do(box: Box) -> None:
    box.driver("470.82.01", "11.4")
    out = box.decide()
    assert out.returncode != 0
    assert "driver 470.82.01 is older than CUDA 11.8 needs (520.61.05)" in out.stderr
    assert "TORCH_INDEX=cu118" in out.stderr


@pytest.mark.parametrize("setup", ["no nvidia-smi", "driver not loaded"])
def test_no_gpu_takes_exactly_the_cpu_spec(box: Box, setup: str) -> None:
    if setup == "driver not loaded":
        box.broken_driver()
    box.torch("2.5.1+cu121", "12.1", available=True)  # a system torch does not matter here
    got = box.decision()
    assert got["choice"] == "cpu"
    assert got["pip_args"] == ["torch==2.13.0"]
    assert got["venv_args"] == []
    said = " ".join(got["reasons"])
    assert ("no nvidia-smi on PATH" if setup == "no nvidia-smi" else "couldn't communicate") in said


def test_the_plain_output_says_what_and_why(box: Box) -> None:
    box.driver("535.104.05", "12.2")
    out = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--dry-run", "--venv", str(box.venv),
            "--python", str(box.python), "--nvml-library", str(box.tmp / "none.so"),
        ],
        capture_output=True, text=True, timeout=60, env={"PATH": str(box.bin)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (
        "torch: install torch>=2.4 built for CUDA 12.1 from https://download.pytorch.org/whl/cu121"
    )
    assert "  because NVIDIA driver 535.104.05 (supports CUDA up to 12.2), from nvidia-smi" in lines


def test_an_existing_venv_with_torch_is_kept(box: Box) -> None:
    (box.venv / "bin").mkdir(parents=True)
    executable(box.venv / "bin" / "python", '#!/bin/sh\necho \'{"version": "2.13.0+cpu"}\'\n')
    box.driver("550.54.14", "12.4")
    out = box.decide()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["choice"] == "keep"


def test_a_forced_index_wins(box: Box) -> None:
    got = box.decision("--index", "cpu")
    assert got["pip_args"] == index("cpu")


def test_this_machine_takes_the_cpu_wheel(tmp_path: Path) -> None:
    # The real PATH and NVML of this machine (no GPU here): what `make` will do.
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--json", "--venv", str(tmp_path / "v")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    if got["choice"] != "cpu":
        pytest.skip(f"this machine has an NVIDIA driver: {got['reasons']}")
    assert got["pip_args"] == ["torch==2.13.0"]
