"""Which torch `make` puts in .venv, and why. Standard library only: it runs before the venv exists.

The default CUDA build of torch on PyPI needs a recent NVIDIA driver, which many rented boxes do
not have, and pip would ignore the driver-matched torch their images already ship. So, first
match wins:

1. system   the system Python has a torch that imports, is a CUDA build whose CUDA release the
            driver supports, sees the GPU and is recent enough for tunedeck: .venv is created
            with --system-site-packages and torch is not installed;
2. cuda     an NVIDIA driver (nvidia-smi, or NVML through ctypes) but no such torch: torch from
            the PyTorch wheel index of the newest CUDA release the driver supports;
3. cpu      no NVIDIA driver: the CPU spec `make` passes (torch==2.13.0 unless TORCH_SPEC says).

An existing .venv that already imports torch is kept as it is. Every choice is printed with its
reasons. `--dry-run` decides and prints without creating or installing anything.

    python3 tools/setup_torch.py --venv .venv --cpu-spec torch==2.13.0
    python3 tools/setup_torch.py --dry-run [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# NVIDIA's minimum Linux x86-64 driver for the GA release of each CUDA version (CUDA Toolkit
# release notes, "CUDA Toolkit and Corresponding Driver Versions"), with the PyTorch wheel index
# built against that release. Newest first.
CUDA_WHEELS: tuple[tuple[tuple[int, int], str, str], ...] = (
    ((13, 0), "580.65.06", "cu130"),
    ((12, 8), "570.26", "cu128"),
    ((12, 6), "560.28.03", "cu126"),
    ((12, 4), "550.54.14", "cu124"),
    ((12, 1), "530.30.02", "cu121"),
    ((11, 8), "520.61.05", "cu118"),
)
INDEX_URL = "https://download.pytorch.org/whl/{tag}"
CONSTRAINT_FILE = "torch-constraint.txt"
PROBE_TIMEOUT_S = 180.0  # importing torch and initialising CUDA on a slow disk

# Run by the Python being asked; prints one JSON object. A torch that fails to import in any
# other way makes the probe exit non-zero, which reads as "no usable torch" with its last line.
PROBE = """
import json
try:
    import torch
except (ImportError, OSError) as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)
print(json.dumps({
    "version": torch.__version__,
    "cuda": torch.version.cuda,
    "available": bool(torch.cuda.is_available()),
}))
"""


def version_tuple(text: str) -> tuple[int, ...]:
    """`550.54.14` -> (550, 54, 14); `2.5.1+cu121` -> (2, 5, 1)."""
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def torch_floor() -> tuple[int, ...]:
    """The lowest torch tunedeck takes (the `torch>=` of pyproject.toml's train extra)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"torch>=([0-9.]+)', text)
    if match is None:
        raise SystemExit("tools/setup_torch.py: no `torch>=` requirement in pyproject.toml")
    return version_tuple(match.group(1))


# ---------------------------------------------------------------- the driver


@dataclass(frozen=True)
class Driver:
    version: str
    cuda: str | None
    """The newest CUDA release the driver supports, as it reports it."""
    source: str


def driver_from_nvidia_smi() -> tuple[Driver | None, str]:
    """The driver as `nvidia-smi` reports it, or None and why not."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "no nvidia-smi on PATH"
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi did not answer ({exc})"
    version = re.search(r"Driver Version:\s*([0-9][0-9.]*)", out.stdout)
    if out.returncode != 0 or version is None:
        said = (out.stdout + out.stderr).strip().splitlines()
        return None, f"nvidia-smi failed: {said[0] if said else f'exit code {out.returncode}'}"
    cuda = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", out.stdout)
    return Driver(version.group(1), cuda.group(1) if cuda else None, "nvidia-smi"), ""


def driver_from_nvml(library: str) -> tuple[Driver | None, str]:
    """The driver as NVML reports it (through ctypes: nothing to install), or None and why."""
    try:
        nvml = ctypes.CDLL(library)
    except OSError:
        return None, f"no NVML library ({library})"
    init = getattr(nvml, "nvmlInit_v2", None) or getattr(nvml, "nvmlInit", None)
    if init is None or init() != 0:
        return None, "NVML did not start (no NVIDIA driver loaded)"
    try:
        buf = ctypes.create_string_buffer(96)
        if nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(len(buf))) != 0:
            return None, "NVML gave no driver version"
        # 12040 means CUDA 12.4; drivers before the _v2 name have the plain one.
        get_cuda = getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None) or getattr(
            nvml, "nvmlSystemGetCudaDriverVersion", None
        )
        code = ctypes.c_int(0)
        cuda = None
        if get_cuda is not None and get_cuda(ctypes.byref(code)) == 0 and code.value > 0:
            cuda = f"{code.value // 1000}.{code.value % 1000 // 10}"
        return Driver(buf.value.decode(), cuda, "NVML"), ""
    finally:
        nvml.nvmlShutdown()


def find_driver(nvml_library: str) -> tuple[Driver | None, list[str]]:
    driver, why_smi = driver_from_nvidia_smi()
    if driver is not None:
        return driver, []
    driver, why_nvml = driver_from_nvml(nvml_library)
    return driver, [] if driver is not None else [why_smi, why_nvml]


def wheel_for(driver: Driver) -> tuple[tuple[int, int], str] | None:
    """The newest CUDA release whose minimum driver this driver meets (and which it reports
    supporting), with its wheel index tag; None when the driver is older than every one."""
    have = version_tuple(driver.version)
    reported = version_tuple(driver.cuda) if driver.cuda else None
    for cuda, minimum, tag in CUDA_WHEELS:
        if have >= version_tuple(minimum) and (reported is None or reported >= cuda):
            return cuda, tag
    return None


# ---------------------------------------------------------------- torch in a Python


def probe_torch(python: str) -> dict[str, object]:
    """What torch `python` imports: version, CUDA release, GPU seen; or `error`."""
    try:
        out = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run {python} ({exc})"}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        said = out.stderr.strip().splitlines()
        return {"error": said[-1] if said else f"exit code {out.returncode}"}
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return {"error": f"unreadable answer: {lines[-1][:80]}"}
    return value if isinstance(value, dict) else {"error": "unreadable answer"}


def system_torch_problem(info: dict[str, object], driver: Driver, floor: tuple[int, ...]) -> str:
    """Why the system torch cannot serve (empty when it can)."""
    if "error" in info:
        return f"the system Python has no torch that imports ({info['error']})"
    version, cuda = str(info.get("version")), info.get("cuda")
    if version_tuple(version) < floor:
        need = ".".join(map(str, floor))
        return f"the system torch {version} is older than tunedeck needs (>= {need})"
    if not cuda:
        return f"the system torch {version} is a CPU build"
    if driver.cuda and version_tuple(str(cuda)) > version_tuple(driver.cuda):
        return (
            f"the system torch {version} is built for CUDA {cuda}, newer than driver "
            f"{driver.version} supports ({driver.cuda})"
        )
    if not info.get("available"):
        return f"the system torch {version} (CUDA {cuda}) does not see the GPU"
    return ""


# ---------------------------------------------------------------- the decision


@dataclass
class Decision:
    choice: str
    """system, cuda, cpu or keep (an existing .venv with torch)."""
    summary: str
    reasons: list[str] = field(default_factory=list)
    venv_args: list[str] = field(default_factory=list)
    """Extra arguments of `python -m venv`."""
    pip_args: list[str] = field(default_factory=list)
    """What `pip install` gets for torch; empty when nothing is installed."""


def _venv_sees_system(venv: Path) -> bool:
    try:
        cfg = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    except OSError:
        return False
    return re.search(r"include-system-site-packages\s*=\s*true", cfg, re.IGNORECASE) is not None


def decide(
    venv: Path, python: str, cpu_spec: str, nvml_library: str, index: str | None
) -> Decision:
    floor = torch_floor()
    floor_spec = f"torch>={'.'.join(map(str, floor))}"
    venv_python = venv / "bin" / "python"
    if venv_python.exists():
        info = probe_torch(str(venv_python))
        if "error" not in info:
            build = f"CUDA {info['cuda']}" if info.get("cuda") else "CPU"
            return Decision(
                "keep",
                f"keep the torch {info.get('version')} ({build}) already in {venv}",
                [f"{venv} imports torch; `make clean` first to choose again"],
            )
    if index:
        url = index if "://" in index else INDEX_URL.format(tag=index)
        return Decision(
            "cuda" if index.startswith("cu") else "index",
            f"install {floor_spec} from {url}",
            [f"TORCH_INDEX={index} was given"],
            pip_args=[floor_spec, "--index-url", url],
        )

    driver, no_driver = find_driver(nvml_library)
    if driver is None:
        return Decision(
            "cpu",
            f"install the CPU build: {cpu_spec}",
            ["no NVIDIA driver found: " + "; ".join(no_driver)],
            pip_args=[cpu_spec],
        )
    seen = f"NVIDIA driver {driver.version}" + (
        f" (supports CUDA up to {driver.cuda})" if driver.cuda else ""
    )
    reasons = [f"{seen}, from {driver.source}"]
    if not venv.exists() or _venv_sees_system(venv):
        info = probe_torch(python)
        problem = system_torch_problem(info, driver, floor)
        if not problem:
            return Decision(
                "system",
                f"use the system torch {info['version']} (CUDA {info['cuda']}): "
                f"{venv} sees the system packages, no torch is installed",
                [*reasons, f"{python} imports torch {info['version']}, which sees the GPU"],
                venv_args=["--system-site-packages"],
            )
        reasons.append(problem)
    else:
        reasons.append(f"{venv} exists without the system packages; `make clean` to use them")
    wheel = wheel_for(driver)
    if wheel is None:
        oldest_cuda, oldest_driver, oldest_tag = CUDA_WHEELS[-1]
        raise SystemExit(
            f"torch: NVIDIA driver {driver.version} is older than CUDA "
            f"{oldest_cuda[0]}.{oldest_cuda[1]} needs ({oldest_driver}), "
            "the oldest CUDA release with current torch builds. Update the driver, or choose "
            f"an index yourself: make TORCH_INDEX={oldest_tag} (or TORCH_INDEX=cpu)"
        )
    (major, minor), tag = wheel
    url = INDEX_URL.format(tag=tag)
    minimum = next(m for c, m, t in CUDA_WHEELS if t == tag)
    reasons.append(
        f"CUDA {major}.{minor} is the newest release this driver runs "
        f"(it needs driver {minimum} or newer): wheel index {tag}"
    )
    return Decision(
        "cuda", f"install {floor_spec} built for CUDA {major}.{minor} from {url}", reasons,
        pip_args=[floor_spec, "--index-url", url],
    )  # fmt: skip


# ---------------------------------------------------------------- carrying it out


def carry_out(decision: Decision, venv: Path, python: str) -> None:
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", *decision.venv_args, str(venv)], check=True)
    venv_python = str(venv / "bin" / "python")
    if decision.pip_args:
        subprocess.run([venv_python, "-m", "pip", "install", *decision.pip_args], check=True)
    # The rest of the set-up must not replace this torch by PyPI's default build.
    info = probe_torch(venv_python)
    if "error" in info:
        raise SystemExit(f"torch: {venv} does not import torch after the set-up: {info['error']}")
    (venv / CONSTRAINT_FILE).write_text(f"torch=={info['version']}\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv", help="the virtual environment (.venv)")
    parser.add_argument("--python", default=sys.executable, help="the system Python")
    parser.add_argument("--cpu-spec", default="torch==2.13.0", help="torch without a GPU")
    parser.add_argument("--index", default="", help="force a wheel index: cu124, cpu or a URL")
    parser.add_argument(
        "--nvml-library", default="libnvidia-ml.so.1", help="NVML, asked when nvidia-smi is not"
    )
    parser.add_argument("--dry-run", action="store_true", help="decide and print only")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    args = parser.parse_args(argv)
    venv = Path(args.venv)
    decision = decide(venv, args.python, args.cpu_spec, args.nvml_library, args.index or None)
    if args.json:
        print(json.dumps(asdict(decision), indent=2))
    else:
        print(f"torch: {decision.summary}")
        for reason in decision.reasons:
            print(f"  because {reason}")
    if not args.dry_run:
        carry_out(decision, venv, args.python)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
