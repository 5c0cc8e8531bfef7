"""`runner.gpu.GpuSource` over the fake NVML: several GPUs in CUDA order, an error in the middle
of a poll, a GPU that falls off the bus or disappears, no driver. Also keeps the fake honest."""

from __future__ import annotations

from fake_nvml import FakeGpu, FakeNvml, FakeProcess, no_driver, two_h100s

from runner.gpu import GIB, GpuSource


def test_several_gpus_in_cuda_order_with_visible_devices() -> None:
    nvml = FakeNvml(
        [
            FakeGpu(name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0)),
            FakeGpu(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0)),
            FakeGpu(name="Tesla T4", total_gib=15.0, compute_capability=(7, 5)),
        ]
    )
    # CUDA's default order puts the newest architecture first.
    snap = GpuSource(nvml=nvml, env={}).snapshot()
    assert [g.name for g in snap.gpus] == [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA A100-SXM4-80GB",
        "Tesla T4",
    ]
    assert [g.index for g in snap.gpus] == [0, 1, 2]
    assert [g.bf16 for g in snap.gpus] == [True, True, False]
    pci = GpuSource(nvml=nvml, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).snapshot()
    assert [g.nvml_index for g in pci.gpus] == [0, 1, 2]
    picked = GpuSource(
        nvml=nvml, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2,0"}
    ).snapshot()
    assert [(g.index, g.name) for g in picked.gpus] == [
        (0, "Tesla T4"),
        (1, "NVIDIA A100-SXM4-80GB"),
    ]


def test_figures_and_processes() -> None:
    nvml = two_h100s()
    nvml.gpus[0].processes.append(FakeProcess(pid=1, used_gib=0.25))
    snap = GpuSource(nvml=nvml, env={}).snapshot()
    assert snap.available and snap.driver_version == "580.82.07" and snap.cuda_version == "13.0"
    busy = snap.gpus[0]
    assert busy.memory_used_bytes == int(58.2 * GIB)
    assert busy.utilization_pct == 97 and busy.temperature_c == 71
    assert busy.power_w == 612.0 and busy.power_limit_w == 700.0
    assert [p.pid for p in busy.processes] == [999_999, 1]


def test_an_error_in_the_middle_of_a_poll_loses_one_figure_only() -> None:
    nvml = two_h100s()
    source = GpuSource(nvml=nvml, env={})
    nvml.fail("nvmlDeviceGetUtilizationRates")
    snap = source.snapshot()
    assert snap.available and len(snap.gpus) == 2
    assert snap.gpus[0].utilization_pct is None  # the call that failed
    assert snap.gpus[0].memory_used_bytes is not None  # the rest of the poll went on
    assert snap.gpus[1].utilization_pct == 0
    assert source.snapshot().gpus[0].utilization_pct == 97  # and the next poll is whole


def test_a_gpu_that_falls_off_the_bus_or_disappears() -> None:
    nvml = two_h100s()
    source = GpuSource(nvml=nvml, env={})
    nvml.lose(1)
    assert [g.nvml_index for g in source.snapshot().gpus] == [0]
    nvml.remove(1)
    nvml.remove(0)
    snap = source.snapshot()
    assert not snap.available and snap.reason == "no NVIDIA GPU found"


def test_no_driver_and_a_slow_driver() -> None:
    snap = GpuSource(nvml=no_driver(), env={}).snapshot()
    assert not snap.available and snap.reason == "no NVIDIA driver found" and snap.gpus == ()
    nvml = two_h100s()
    nvml.delay_s = 0.01
    assert len(GpuSource(nvml=nvml, env={}).snapshot().gpus) == 2
    nvml.release()
    assert nvml.delay_s == 0.0
