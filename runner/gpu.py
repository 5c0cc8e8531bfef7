"""NVIDIA GPU detection and telemetry through NVML, in one place.

`GpuSource.snapshot()` never raises: no driver, a missing library, a GPU that falls off the bus or
an error half-way through a poll all become "not available" fields or a snapshot with
`available=False` and the reason. Each poll is one frozen `GpuSnapshot`.

Indices are reported in CUDA order with `CUDA_VISIBLE_DEVICES` applied, so "GPU 0" here is
`cuda:0` in the training process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import psutil

GIB = 1024**3


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU."""

    pid: int
    name: str
    used_bytes: int | None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU at one moment. Fields NVML could not give are None."""

    index: int
    """CUDA index, after `CUDA_VISIBLE_DEVICES`."""
    nvml_index: int
    name: str
    uuid: str
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    utilization_pct: int | None
    memory_utilization_pct: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None
    compute_capability: tuple[int, int] | None
    processes: tuple[GpuProcess, ...] = ()
    pci_bus_id: str | None = None

    @property
    def bf16(self) -> bool | None:
        """bf16 tensor cores: compute capability 8.0 (Ampere) and newer."""
        return None if self.compute_capability is None else self.compute_capability >= (8, 0)

    @property
    def memory_total_gib(self) -> float | None:
        return None if self.memory_total_bytes is None else self.memory_total_bytes / GIB

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "nvml_index": self.nvml_index,
            "name": self.name,
            "uuid": self.uuid,
            "pci_bus_id": self.pci_bus_id,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_used_bytes": self.memory_used_bytes,
            "memory_free_bytes": self.memory_free_bytes,
            "utilization_pct": self.utilization_pct,
            "memory_utilization_pct": self.memory_utilization_pct,
            "temperature_c": self.temperature_c,
            "power_w": self.power_w,
            "power_limit_w": self.power_limit_w,
            "compute_capability": (
                f"{self.compute_capability[0]}.{self.compute_capability[1]}"
                if self.compute_capability
                else None
            ),
            "bf16": self.bf16,
            "processes": [
                {"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes} for p in self.processes
            ],
        }


@dataclass(frozen=True)
class GpuSnapshot:
    """Every visible GPU at one moment, or why there are none."""

    available: bool
    reason: str | None
    driver_version: str | None
    cuda_version: str | None
    gpus: tuple[GpuInfo, ...]
    taken_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "reason": self.reason,
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "gpus": [g.to_json() for g in self.gpus],
        }


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _load_pynvml() -> ModuleType:
    import pynvml  # nvidia-ml-py; imported lazily so a broken install is "not available"

    return pynvml


def _process_name(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
        return " ".join(cmd)[:120] if cmd else proc.name()
    except (psutil.Error, OSError):
        return "?"


def parse_visible_devices(value: str | None) -> list[str] | None:
    """The entries of `CUDA_VISIBLE_DEVICES` up to the first invalid one, as CUDA reads it;
    None when unset (every GPU visible)."""
    if value is None:
        return None
    entries: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            break
        if item.lstrip("-").isdigit():
            if int(item) < 0:
                break  # CUDA stops at the first negative index
            entries.append(str(int(item)))
        elif item.startswith(("GPU-", "MIG-")):
            entries.append(item)
        else:
            break
    return entries


class GpuSource:
    """Wraps NVML. `nvml` is the module to use (tests pass a fake with the same functions);
    by default `pynvml` from nvidia-ml-py, loaded on the first poll."""

    def __init__(
        self,
        nvml: Any | None = None,
        env: dict[str, str] | None = None,
        with_processes: bool = True,
        loader: Callable[[], Any] = _load_pynvml,
    ):
        self._nvml = nvml
        self._loader = loader
        self._env = env if env is not None else os.environ
        self._with_processes = with_processes
        self._initialised = False
        self._failure: str | None = None
        self._lock = threading.Lock()

    # -- lifecycle
    def _init(self) -> bool:
        if self._initialised:
            return True
        if self._failure is not None:
            return False
        try:
            if self._nvml is None:
                self._nvml = self._loader()
            self._nvml.nvmlInit()
        except ImportError:
            self._failure = "nvidia-ml-py is not installed"
            return False
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._failure = _describe_nvml_error(exc)
            return False
        self._initialised = True
        return True

    def close(self) -> None:
        with self._lock:
            if self._initialised and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:  # shutting down a broken NVML: nothing left to report
                    self._failure = "closed"
            self._initialised = False

    # -- polling
    def _call(self, fn: str, *args: Any) -> Any:
        """One NVML call; any error becomes None (the field reads "not available")."""
        try:
            return getattr(self._nvml, fn)(*args)
        except Exception:
            return None

    def snapshot(self) -> GpuSnapshot:
        """Poll every visible GPU once. Never raises."""
        with self._lock:
            if not self._init():
                return GpuSnapshot(False, self._failure, None, None, ())
            try:
                return self._poll()
            except Exception as exc:  # an NVML failure mid-poll must not reach the UI
                return GpuSnapshot(
                    False, f"NVML poll failed: {_describe_nvml_error(exc)}", None, None, ()
                )

    def _poll(self) -> GpuSnapshot:
        nvml = self._nvml
        driver = self._call("nvmlSystemGetDriverVersion")
        cuda_raw = self._call("nvmlSystemGetCudaDriverVersion")
        cuda = (
            f"{cuda_raw // 1000}.{(cuda_raw % 1000) // 10}" if isinstance(cuda_raw, int) else None
        )
        count = self._call("nvmlDeviceGetCount") or 0
        devices: list[tuple[int, Any]] = []
        for i in range(count):
            handle = self._call("nvmlDeviceGetHandleByIndex", i)
            if handle is not None:
                devices.append((i, handle))
        infos = [g for g in (self._device(i, h) for i, h in devices) if g is not None]
        visible = self._order_and_filter(infos)
        if count == 0 or not visible:
            why = "no NVIDIA GPU found" if count == 0 else "no GPU visible (CUDA_VISIBLE_DEVICES)"
            return GpuSnapshot(False, why, _text(driver) if driver else None, cuda, ())
        _ = nvml
        return GpuSnapshot(True, None, _text(driver) if driver else None, cuda, tuple(visible))

    def _device(self, nvml_index: int, handle: Any) -> GpuInfo | None:
        name = self._call("nvmlDeviceGetName", handle)
        uuid = self._call("nvmlDeviceGetUUID", handle)
        if name is None and uuid is None:
            return None  # fell off the bus between count and query
        mem = self._call("nvmlDeviceGetMemoryInfo", handle)
        util = self._call("nvmlDeviceGetUtilizationRates", handle)
        temp = self._call(
            "nvmlDeviceGetTemperature", handle, getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        )
        power = self._call("nvmlDeviceGetPowerUsage", handle)
        limit = self._call("nvmlDeviceGetEnforcedPowerLimit", handle)
        cc = self._call("nvmlDeviceGetCudaComputeCapability", handle)
        pci = self._call("nvmlDeviceGetPciInfo", handle)
        bus_id = _text(getattr(pci, "busId", "")) if pci is not None else None
        processes: tuple[GpuProcess, ...] = ()
        if self._with_processes:
            procs = self._call("nvmlDeviceGetComputeRunningProcesses", handle) or []
            processes = tuple(
                GpuProcess(
                    pid=int(p.pid),
                    name=_process_name(int(p.pid)),
                    used_bytes=(
                        int(p.usedGpuMemory) if getattr(p, "usedGpuMemory", None) else None
                    ),
                )
                for p in procs
            )
        return GpuInfo(
            index=nvml_index,
            nvml_index=nvml_index,
            name=_text(name) if name is not None else "unknown GPU",
            uuid=_text(uuid) if uuid is not None else "",
            memory_total_bytes=int(mem.total) if mem is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_free_bytes=int(mem.free) if mem is not None else None,
            utilization_pct=int(util.gpu) if util is not None else None,
            memory_utilization_pct=int(util.memory) if util is not None else None,
            temperature_c=int(temp) if temp is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            power_limit_w=limit / 1000.0 if limit is not None else None,
            compute_capability=(int(cc[0]), int(cc[1])) if cc is not None else None,
            processes=processes,
            pci_bus_id=bus_id or None,
        )

    def _order_and_filter(self, infos: list[GpuInfo]) -> list[GpuInfo]:
        """CUDA order: PCI bus order with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, else CUDA's default
        FASTEST_FIRST (newest compute capability first, PCI order among equals); then
        `CUDA_VISIBLE_DEVICES` picks and renumbers."""
        ordered = sorted(infos, key=lambda g: (g.pci_bus_id or "", g.nvml_index))
        if self._env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID":
            ordered = sorted(
                ordered, key=lambda g: tuple(-x for x in (g.compute_capability or (0, 0)))
            )
        wanted = parse_visible_devices(self._env.get("CUDA_VISIBLE_DEVICES"))
        if wanted is not None:
            picked: list[GpuInfo] = []
            for item in wanted:
                if item.isdigit():
                    idx = int(item)
                    if idx >= len(ordered):
                        break
                    match = ordered[idx]
                else:
                    found = [g for g in ordered if g.uuid.startswith(item)]
                    if len(found) != 1:
                        break
                    match = found[0]
                if match in picked:
                    break
                picked.append(match)
            ordered = picked
        return [_renumber(g, i) for i, g in enumerate(ordered)]


def _renumber(gpu: GpuInfo, index: int) -> GpuInfo:
    from dataclasses import replace

    return replace(gpu, index=index)


def _describe_nvml_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if "LibraryNotFound" in name or "DriverNotLoaded" in name:
        return "no NVIDIA driver found"
    if "NoPermission" in name:
        return "no permission to query the NVIDIA driver"
    text = str(exc).strip()
    return f"{name}: {text}" if text else name
