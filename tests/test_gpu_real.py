"""The real NVML path, on a machine with an NVIDIA GPU (skipped elsewhere)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from runner.gpu import GpuSource


def _nvidia_smi_rows() -> list[list[str]]:
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=uuid,name,memory.total,compute_cap",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        return []
    return [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines()]


needs_gpu = pytest.mark.skipif(
    shutil.which("nvidia-smi") is None or not _nvidia_smi_rows(),
    reason="no NVIDIA GPU on this machine",
)


@pytest.mark.gpu
@needs_gpu
def test_real_nvml_matches_nvidia_smi() -> None:
    source = GpuSource()
    snap = source.snapshot()
    source.close()
    assert snap.available, snap.reason
    assert snap.driver_version
    by_uuid = {g.uuid: g for g in snap.gpus}
    for uuid, name, total_mib, cc in _nvidia_smi_rows():
        if uuid not in by_uuid:
            continue  # hidden by CUDA_VISIBLE_DEVICES
        gpu = by_uuid[uuid]
        assert gpu.name == name
        assert gpu.memory_total_bytes is not None
        assert abs(gpu.memory_total_bytes / 2**20 - float(total_mib)) <= 1
        assert gpu.to_json()["compute_capability"] == cc
        assert gpu.utilization_pct is not None


def test_no_driver_reads_as_no_gpu() -> None:
    """Whatever this machine has, a library that cannot load is "not available", never a raise."""

    def broken_loader() -> object:
        raise ImportError("no pynvml")

    snap = GpuSource(loader=broken_loader).snapshot()
    assert not snap.available
    assert snap.reason == "nvidia-ml-py is not installed"
    assert snap.gpus == ()
