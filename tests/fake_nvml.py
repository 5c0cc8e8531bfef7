"""A fake NVML module: the functions `runner/gpu.py` calls, over GPUs described in Python.

It stands in for `pynvml` (nvidia-ml-py) on machines without an NVIDIA GPU. Besides healthy GPUs
it can raise in the middle of a poll, lose a GPU (as when one falls off the bus), fail at init
like a machine without a driver, and be slow, so callers can be tested on each.

    nvml = FakeNvml([FakeGpu("NVIDIA H100 80GB HBM3", total_gib=80), FakeGpu(...)])
    source = GpuSource(nvml=nvml)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

GIB = 1024**3
NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    """Base of the fake errors, as `pynvml.NVMLError`."""


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


class NVMLError_Unknown(NVMLError):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


@dataclass
class FakeProcess:
    pid: int
    used_gib: float


@dataclass
class FakeGpu:
    """One fake GPU; change its fields between polls to simulate load."""

    name: str = "NVIDIA H100 80GB HBM3"
    total_gib: float = 79.6
    used_gib: float = 0.5
    util_pct: int = 0
    mem_util_pct: int = 0
    temperature_c: int = 35
    power_w: float = 70.0
    power_limit_w: float = 700.0
    compute_capability: tuple[int, int] = (9, 0)
    uuid: str = ""
    pci_bus_id: str = ""
    processes: list[FakeProcess] = field(default_factory=list)
    lost: bool = False
    """A lost GPU answers every query with NVMLError_GpuIsLost."""


@dataclass(frozen=True)
class _Handle:
    index: int


class FakeNvml:
    """Module-like object with the NVML functions tunedeck uses."""

    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVMLError = NVMLError
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_Unknown = NVMLError_Unknown

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        driver_version: str = "580.82.07",
        cuda_driver_version: int = 13000,
        init_error: type[NVMLError] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        for i, gpu in enumerate(self.gpus):
            gpu.uuid = gpu.uuid or f"GPU-{i:08x}-fake-{i:04d}"
            gpu.pci_bus_id = gpu.pci_bus_id or f"00000000:{0x10 + i:02X}:00.0"
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.init_error = init_error
        self.delay_s = delay_s
        """Every call sleeps this long: a slow driver."""
        self.initialised = False
        self.calls = 0
        self.fail_next: dict[str, int] = {}
        """Function name -> how many of its next calls raise NVMLError_Unknown."""
        self._lock = threading.Lock()
        self._released = threading.Event()

    # ---------------------------------------------------------------- test controls

    def release(self) -> None:
        """End every slow call now, and make later ones fast (a driver that recovered)."""
        self.delay_s = 0.0
        self._released.set()

    def fail(self, function: str, times: int = 1) -> None:
        """Make the next `times` calls of `function` raise, as a flaky driver mid-poll."""
        self.fail_next[function] = times

    def lose(self, index: int) -> None:
        """GPU `index` falls off the bus: every query about it raises from now on."""
        self.gpus[index].lost = True

    def remove(self, index: int) -> None:
        """GPU `index` is gone entirely: the count drops and the rest move up."""
        del self.gpus[index]

    # ---------------------------------------------------------------- plumbing

    def _enter(self, function: str) -> None:
        with self._lock:
            self.calls += 1
            left = self.fail_next.get(function, 0)
            if left:
                self.fail_next[function] = left - 1
                raise NVMLError_Unknown(f"{function} failed")
        if self.delay_s and not self._released.is_set():
            self._released.wait(self.delay_s)
        if function not in ("nvmlInit", "nvmlShutdown") and not self.initialised:
            raise NVMLError_Uninitialized("NVML not initialised")

    def _gpu(self, function: str, handle: _Handle) -> FakeGpu:
        self._enter(function)
        if handle.index >= len(self.gpus) or self.gpus[handle.index].lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        return self.gpus[handle.index]

    # ---------------------------------------------------------------- the NVML API

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise self.init_error("NVML Shared Library Not Found")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if index >= len(self.gpus):
            raise NVMLError_GpuIsLost("no such GPU")
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        total = int(gpu.total_gib * GIB)
        used = int(gpu.used_gib * GIB)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=gpu.util_pct, memory=gpu.mem_util_pct)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        return self._gpu("nvmlDeviceGetTemperature", handle).temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return int(self._gpu("nvmlDeviceGetPowerUsage", handle).power_w * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return int(self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_w * 1000)

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        return self._gpu("nvmlDeviceGetCudaComputeCapability", handle).compute_capability

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> Any:
        return SimpleNamespace(busId=self._gpu("nvmlDeviceGetPciInfo", handle).pci_bus_id)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        return [
            SimpleNamespace(pid=p.pid, usedGpuMemory=int(p.used_gib * GIB)) for p in gpu.processes
        ]


def two_h100s() -> FakeNvml:
    """Two H100s, the first busy with a training process."""
    return FakeNvml(
        [
            FakeGpu(
                used_gib=58.2,
                util_pct=97,
                temperature_c=71,
                power_w=612,
                processes=[FakeProcess(pid=999_999, used_gib=57.8)],
            ),
            FakeGpu(used_gib=0.4, util_pct=0, temperature_c=34, power_w=71),
        ]
    )


def no_driver() -> FakeNvml:
    """A machine without the NVIDIA driver: init fails as pynvml does there."""
    return FakeNvml([], init_error=NVMLError_LibraryNotFound)
