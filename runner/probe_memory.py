"""Memory meters of the probe process: what one phase of the probe (a few steps at one
micro-batch) held at its peak. Imported only by `runner.probe_worker`, in the probe process.

- On CUDA: torch's own peaks (`torch.cuda.max_memory_allocated` / `max_memory_reserved`, reset
  between phases) and the device's used memory as NVML reports it, sampled on a thread, so the
  CUDA context, cuBLAS workspaces and anything else outside torch's allocator are counted too.
- On the CPU there is no allocator with peak statistics: a `TorchDispatchMode` counts the bytes
  of every live tensor storage (each storage once, freed when the storage is), the CPU stand-in
  for `max_memory_allocated`. The process's RSS growth is sampled beside it (psutil); it moves with
  the heap and library loading, so it is reported, not judged on.

Given a memory cap (`--gpu-memory-gib`), both raise `torch.OutOfMemoryError` past it once the
model is loaded (`apply_cap`): on CUDA through `torch.cuda.set_per_process_memory_fraction`, on
the CPU from the counter, so a probe for a smaller card than this one ends the way it would on
that card.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import psutil

from runner.gpu import GpuSource

# NVML samples per second during a phase: a step of a large model lasts seconds, and a spike
# shorter than a sample is caught by torch's own reserved peak instead.
SAMPLE_INTERVAL_S = 0.05


@dataclass
class PhasePeak:
    """One phase's peaks in bytes; None where this device cannot tell."""

    allocated_bytes: int
    reserved_bytes: int | None
    device_bytes: int | None
    """Device memory used above what it was before the probe started (NVML), CUDA context
    included."""
    rss_growth_bytes: int
    context_bytes: int | None = None
    """What the device held beyond torch's reserved memory right after CUDA started."""

    @property
    def fit_bytes(self) -> int:
        """The figure judged against the card: the device peak where NVML gives one (never below
        torch's reserved peak plus the context), else torch's peak."""
        if self.reserved_bytes is None:
            return self.allocated_bytes
        floor = self.reserved_bytes + (self.context_bytes or 0)
        return max(floor, self.device_bytes or 0)


class MemoryCapExceeded(Exception):
    """Raised by `StorageLedger.add` past its cap; the counter turns it into torch's own
    out-of-memory error."""


class StorageLedger:
    """Bytes of live storages, each counted once and released when it is freed, with the peak
    since the last `reset_peak`. Plain Python: the dispatch mode below feeds it."""

    def __init__(self, cap_bytes: int | None = None) -> None:
        self.cap_bytes = cap_bytes
        self.live_bytes = 0
        self.peak_bytes = 0
        self._entries: dict[int, tuple[int, int]] = {}
        self._serial = 0

    def add(self, storage: Any, key: int, nbytes: int, check: bool = True) -> None:
        """Count `storage` (identified by `key`, its address) unless it is counted already;
        MemoryCapExceeded when that takes the live bytes past the cap."""
        if nbytes == 0 or key in self._entries:
            return
        self._serial += 1
        self._entries[key] = (self._serial, nbytes)
        weakref.finalize(storage, self._release, key, self._serial)
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        if check and self.cap_bytes is not None and self.live_bytes > self.cap_bytes:
            raise MemoryCapExceeded(
                f"probe memory cap: {self.live_bytes} bytes of live tensors, more than the "
                f"{self.cap_bytes} bytes allowed"
            )

    def _release(self, key: int, serial: int) -> None:
        # The address may have been reused by a newer storage since; only release our own.
        entry = self._entries.get(key)
        if entry is not None and entry[0] == serial:
            del self._entries[key]
            self.live_bytes -= entry[1]

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes


def live_tensor_counter(ledger: StorageLedger) -> Any:
    """A `TorchDispatchMode` that records every tensor storage its operations create in
    `ledger`, and raises `torch.OutOfMemoryError` past the ledger's cap."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map_only

    def track(tensor: torch.Tensor) -> None:
        record(tensor, check=True)

    def record(tensor: torch.Tensor, check: bool) -> None:
        if tensor.device.type == "meta":
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
            return
        try:
            ledger.add(storage, storage.data_ptr(), storage.nbytes(), check=check)
        except MemoryCapExceeded as exc:
            raise torch.OutOfMemoryError(str(exc)) from None

    class LiveTensorCounter(TorchDispatchMode):
        def adopt(self, tensors: Any) -> None:
            """Count tensors that exist already (the model's weights)."""
            for tensor in tensors:
                record(tensor, check=False)

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            tree_map_only(torch.Tensor, track, out)
            return out

    return LiveTensorCounter()


class DeviceSampler:
    """Samples device 0's used memory (NVML, through `runner.gpu`) and the process's RSS on a
    thread; `peak()` is the highest since the last `reset()`."""

    def __init__(self, on_cuda: bool) -> None:
        self._source = GpuSource(with_processes=False) if on_cuda else None
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.baseline_device_bytes = self.device_used()
        self.baseline_rss_bytes = self._process.memory_info().rss
        self._device_peak: int | None = None
        self._rss_peak = self.baseline_rss_bytes
        self._thread = threading.Thread(target=self._loop, name="probe-sampler", daemon=True)

    def device_used(self) -> int | None:
        if self._source is None:
            return None
        snap = self._source.snapshot()
        if not snap.available or not snap.gpus:
            return None
        return snap.gpus[0].memory_used_bytes

    @property
    def device_name(self) -> str | None:
        if self._source is None:
            return None
        snap = self._source.snapshot()
        return snap.gpus[0].name if snap.available and snap.gpus else None

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> None:
        used = self.device_used()
        rss = self._process.memory_info().rss
        with self._lock:
            if used is not None:
                self._device_peak = max(self._device_peak or 0, used)
            self._rss_peak = max(self._rss_peak, rss)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def reset(self) -> None:
        with self._lock:
            self._device_peak = None
            self._rss_peak = self._process.memory_info().rss

    def peaks(self) -> tuple[int | None, int]:
        """(device bytes above the baseline or None, RSS bytes above the baseline)."""
        self.sample()
        with self._lock:
            device = (
                None
                if self._device_peak is None or self.baseline_device_bytes is None
                else max(0, self._device_peak - self.baseline_device_bytes)
            )
            return device, max(0, self._rss_peak - self.baseline_rss_bytes)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._source is not None:
            self._source.close()


class MemoryMeter:
    """The peaks of one phase at a time, on the device the probe trains on."""

    def __init__(self, on_cuda: bool, cap_bytes: int | None) -> None:
        import torch

        self._torch = torch
        self.on_cuda = on_cuda
        # Sampled before CUDA is touched: the baseline excludes this process's context.
        self.sampler = DeviceSampler(on_cuda)
        self.ledger: StorageLedger | None = None
        self.counter: Any = None
        self.context_bytes: int | None = None
        if on_cuda:
            torch.cuda.init()
            torch.zeros(1, device="cuda")  # the context exists once something ran
            torch.cuda.synchronize()
            used = self.sampler.device_used()
            base = self.sampler.baseline_device_bytes
            if used is not None and base is not None:
                self.context_bytes = max(0, used - base - torch.cuda.memory_reserved())
        else:
            self.ledger = StorageLedger()
            self.counter = live_tensor_counter(self.ledger)
        self.cap_bytes = cap_bytes
        self.sampler.start()

    def apply_cap(self) -> None:
        """From now on, allocations past `cap_bytes` run out of memory: torch's allocator is
        limited to that share of the card on CUDA, the live-tensor count on the CPU."""
        if self.cap_bytes is None:
            return
        if self.on_cuda:
            total = self._torch.cuda.get_device_properties(0).total_memory
            self._torch.cuda.set_per_process_memory_fraction(min(1.0, self.cap_bytes / total))
        elif self.ledger is not None:
            self.ledger.cap_bytes = self.cap_bytes

    def adopt(self, model: Any) -> None:
        if self.counter is not None:
            self.counter.adopt([*model.parameters(), *model.buffers()])

    def start_phase(self) -> None:
        if self.on_cuda:
            self._torch.cuda.empty_cache()
            self._torch.cuda.reset_peak_memory_stats()
        elif self.ledger is not None:
            self.ledger.reset_peak()
        self.sampler.reset()

    def counting(self) -> AbstractContextManager[Any]:
        """The context to train under: the live-tensor counter on the CPU, nothing on CUDA."""
        return self.counter if self.counter is not None else nullcontext()

    def end_phase(self) -> PhasePeak:
        cuda = self._torch.cuda
        if self.on_cuda:
            cuda.synchronize()
        device, rss = self.sampler.peaks()
        if self.on_cuda:
            return PhasePeak(
                allocated_bytes=cuda.max_memory_allocated(),
                reserved_bytes=cuda.max_memory_reserved(),
                device_bytes=device,
                rss_growth_bytes=rss,
                context_bytes=self.context_bytes,
            )
        assert self.ledger is not None
        return PhasePeak(
            allocated_bytes=self.ledger.peak_bytes,
            reserved_bytes=None,
            device_bytes=None,
            rss_growth_bytes=rss,
        )

    def close(self) -> None:
        self.sampler.close()
