"""`benchmarks/gpu_truth.py`: its smallest run on whatever this machine has, the results file's
shape, and on a CUDA GPU the planner's accuracy targets over the quick grid."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_truth.py"
# The fields every measured case carries (null where this machine cannot measure them).
CASE_FIELDS = (
    "measured_torch_peak_gib",
    "planned_torch_peak_gib",
    "measured_device_peak_gib",
    "planned_device_peak_gib",
    "measured_tokens_per_s",
    "planned_tokens_per_s",
)
GPU_MEASURED = (
    "measured_torch_peak_gib",
    "measured_allocated_peak_gib",
    "measured_device_peak_gib",
)


def run_benchmark(tmp_path: Path, *args: str, timeout_s: float) -> dict[str, Any]:
    out = tmp_path / "truth.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_case(case: dict[str, Any], cuda: bool) -> None:
    for key in ("id", "model", "method", "trainer", "micro_batch", "seq_len", "grad_ckpt"):
        assert key in case, key
    assert case["status"] in ("ok", "skipped", "failed"), case
    if case["status"] != "ok":
        assert case["reason"], case
        return
    for key in CASE_FIELDS:
        assert key in case, key
    for key in (
        "measured_tokens_per_s",
        "measured_step_time_s",
        "measured_rss_peak_gib",
        "planned_torch_peak_gib",
        "planned_allocated_peak_gib",
        "planned_device_peak_gib",
    ):
        assert is_number(case[key]) and case[key] > 0, (key, case[key])
    # Every sequence is exactly max_length tokens: TRL's own count agrees with ours.
    assert case["trl_tokens_per_step"] == case["tokens_per_step"]
    assert case["tokens_per_step"] == case["micro_batch"] * case["seq_len"] * (
        2 if case["trainer"] == "dpo" else 1
    )
    for key in (*GPU_MEASURED, "planned_tokens_per_s", "error_torch_peak_pct"):
        assert is_number(case[key]) if cuda else case[key] is None, (key, case[key])


def test_smoke_grid_writes_the_results_schema(demo_home: Path, tmp_path: Path) -> None:
    """The smallest grid on the demo model: one real run through tunedeck's training path, one
    QLoRA case (skipped without CUDA), the JSON every later figure is read from."""
    result = run_benchmark(
        tmp_path, "--smoke", "--models", "demo", "--sections", "grid", timeout_s=240
    )
    cuda = result["gpu"] != "cpu"
    assert result["grid"] == "smoke"
    assert result["versions"]["torch"] and result["versions"]["trl"]
    assert result["machine"]["cpu_count"] >= 1
    cases = result["cases"]
    assert [c["method"] for c in cases] == ["lora", "qlora"]
    for case in cases:
        check_case(case, cuda)
    assert cases[0]["status"] == "ok", cases[0]
    if not cuda:
        assert cases[1]["status"] == "skipped"
        assert "needs CUDA" in cases[1]["reason"]
        assert cases[0]["planned_fits"] is None  # no GPU to fit
    summary = result["summary"]
    assert summary["cases_ok"] == 1
    assert summary["target_torch_peak_pct"] == 5.0
    assert summary["target_tokens_per_s_pct"] == 15.0
    if not cuda:
        assert summary["mape_torch_peak_pct"] is None
        assert summary["meets_torch_peak"] is None
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--summarise", str(tmp_path / "truth.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert cases[0]["id"] in again.stdout and "MAPE torch_peak" in again.stdout


@pytest.mark.slow
def test_smoke_presets_and_sigterm_sections(demo_home: Path, tmp_path: Path) -> None:
    """The preset-vs-plain-TRL pair and a SIGTERM mid-run with resume, on the demo model."""
    result = run_benchmark(
        tmp_path,
        "--smoke",
        "--models",
        "demo",
        "--sections",
        "presets,sigterm",
        timeout_s=600,
    )
    cuda = result["gpu"] != "cpu"
    lora, qlora = result["presets"]["results"]
    assert lora["status"] == "ok", lora
    assert is_number(lora["tokens_per_s_ratio"]) and lora["tokens_per_s_ratio"] > 0
    assert is_number(lora["tunedeck"]["measured_tokens_per_s"])
    assert is_number(lora["plain_trl"]["measured_tokens_per_s"])
    assert lora["plain_trl"]["settings"]["per_device_train_batch_size"] == 8  # TRL's default
    assert lora["tunedeck"]["settings"]["gradient_accumulation_steps"] == 4  # the preset's
    if not cuda:
        assert qlora["status"] == "skipped"
    stop = {r["method"]: r for r in result["sigterm"]["results"]}
    entry = stop["lora"]
    assert entry["status"] == "ok", entry
    assert entry["status_after_signal"] == "interrupted"
    assert is_number(entry["checkpoint_s"]) and entry["checkpoint_within_notice"]
    assert is_number(entry["exit_s"])
    assert entry["checkpoint_step"] >= entry["signal_after_step"]
    assert entry["steps_compared"] == result["sigterm"]["max_steps"]
    if not cuda:
        # Same seed, same CPU kernels: the resumed run reproduces every loss exactly.
        assert entry["max_abs_loss_diff"] == 0.0
        assert stop["qlora"]["status"] == "skipped"


def _cuda() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    torch = pytest.importorskip("torch")
    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_quick_grid_meets_the_planner_targets(tunedeck_home: Path, tmp_path: Path) -> None:
    """On a CUDA GPU: the quick grid over real architectures; the planner's torch and device
    peaks within 5 % and its tokens/s within 15 % (MAPE), at least 12 cases measured."""
    if not _cuda():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available())")
    result = run_benchmark(tmp_path, "--quick", "--sections", "grid", timeout_s=3600)
    summary = result["summary"]
    assert summary["cases_ok"] >= 12, summary
    assert summary["cases_failed"] == 0, [c for c in result["cases"] if c["status"] == "failed"]
    for case in result["cases"]:
        check_case(case, cuda=True)
    assert summary["meets_torch_peak"], summary
    assert summary["meets_device_peak"], summary
    assert summary["meets_tokens_per_s"], summary


def test_measurement_on_a_fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU figures from a run's records and the NVML sampler: the device peak counts from
    what was in use before the run, the step time leaves the warm-up steps out."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_truth_measure as measure
    from fake_nvml import FakeGpu, FakeNvml, FakeProcess

    from runner.gpu import GpuSource

    gpu = FakeGpu(name="NVIDIA H200", total_gib=139.8, used_gib=0.5)
    source = GpuSource(nvml=FakeNvml([gpu]), env={})
    baseline = measure.device_used_bytes(source)
    sampler = measure.Sampler(source, os.getpid())
    gpu.used_gib, gpu.processes = 10.5, [FakeProcess(os.getpid(), 9.75)]
    sampler.sample()
    gpu.used_gib, gpu.processes = 6.0, []
    sampler.sample()
    records = [
        {
            "step": step,
            "loss": 2.0 - step / 10,
            "num_tokens": 1024 * step,
            # The first step is slow (warm-up); then 0.5 s a step.
            "wall_time": 1000.0 + (0.0 if step == 1 else 4.0 + 0.5 * (step - 2)),
            "peak_gpu_mem_gib": 3.0 + step / 100,
            "peak_gpu_reserved_gib": 3.5 + step / 100,
        }
        for step in range(1, 7)
    ]
    run = measure.RunOutcome(Path("."), "measured", records, sampler, baseline, 20.0)
    fields = measure.measured_fields(run, warmup_steps=2, tokens_per_step=1024)
    source.close()
    assert fields["measured_device_peak_gib"] == 10.0
    assert fields["measured_process_gpu_gib"] == 9.75
    assert fields["measured_torch_peak_gib"] == 3.56
    assert fields["measured_allocated_peak_gib"] == 3.06
    assert fields["measured_step_time_s"] == 0.5
    assert fields["timed_steps"] == 4
    assert fields["measured_tokens_per_s"] == 2048.0
    assert fields["trl_tokens_per_step"] == 1024.0
    assert fields["measured_rss_peak_gib"] > 0


def test_quick_grids_cover_every_axis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_truth

    for cuda, models in ((True, gpu_truth.CUDA_MODELS), (False, gpu_truth.CPU_MODELS)):
        cases = gpu_truth.grid(list(models), "quick", cuda)
        assert len(cases) >= 12
        assert len({c.case_id for c in cases}) == len(cases)
        assert {c.method for c in cases} == {"full", "lora", "qlora"}
        assert {c.micro_batch for c in cases} == {1, 4}
        assert {c.seq_len for c in cases} == {512, 2048}
        assert {c.grad_ckpt for c in cases} == {True, False}
        assert {c.optimizer for c in cases} == {gpu_truth.ADAMW, gpu_truth.PAGED}
        assert {c.trainer for c in cases} == {"sft", "dpo"}
        assert {c.model for c in cases} == set(models)
