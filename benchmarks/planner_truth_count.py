"""Counting a training step's live tensor bytes without the memory: the counter and the CUDA
stand-ins of `benchmarks/planner_truth.py`.

`LiveBytes` is a `TorchDispatchMode` that sees every tensor an operator returns, keys it by its
storage (views share one) and frees it when the storage dies (`weakref.finalize`), so its count
is what a caching allocator's `memory_allocated` would show, less the rounding to blocks. Each
storage is tagged with the region of the step that made it (forward, LM head, backward,
recomputation, optimizer step) and, once known, its role (weight, adapter, gradient, optimizer
state); the event log gives the peak, each component's own peak and what is live at the peak.

On the meta device every operator runs on shapes alone, so a full-size model costs no memory.
Data-dependent reads (`.item()`, indexing by a boolean mask) are answered as for the batch
being counted (unpadded, with a known number of valid labels); what a GPU computes
differently is in `planner_truth_cuda`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Regions of a step, and the component a storage made there counts as unless it has a role.
REGION_COMPONENT = {
    "build": "other",
    "forward": "activations",
    "recompute": "activations",
    "head": "logits/loss",
    "backward": "backward temporaries",
    "optimizer": "optimizer temporaries",
    "other": "other",
}
ROLES = (
    "weights",
    "reference model",
    "adapters",
    "gradients",
    "optimizer states",
    "paged optimizer states",
)
# Memory that is not PyTorch's (bitsandbytes' paged states live in CUDA managed memory).
OUTSIDE_POOL = ("paged optimizer states",)
COMPONENTS = (
    "weights",
    "reference model",
    "adapters",
    "gradients",
    "optimizer states",
    "paged optimizer states",
    "activations",
    "logits/loss",
    "backward temporaries",
    "optimizer temporaries",
    "other",
)


@dataclass
class _Storage:
    nbytes: int
    region: str
    born: int
    died: int | None = None
    role: str | None = None
    shape: tuple[int, ...] = ()
    dtype: str = ""
    died_region: str = ""

    @property
    def component(self) -> str:
        return self.role or REGION_COMPONENT[self.region]


@dataclass
class Tally:
    """What one run of the counter found, in bytes."""

    peak_bytes: int
    """The most bytes live in PyTorch's pool at once (what `max_memory_allocated` shows)."""
    at_peak_bytes: dict[str, int]
    """Component -> bytes live at the overall peak."""
    component_peak_bytes: dict[str, int]
    """Component -> the most bytes it held at any moment."""
    peak_region: str
    """The region of the step in which the peak fell."""
    region_peak_bytes: dict[str, int]
    """Region -> the most bytes in the pool while the step was in it (the peak of the
    forward pass, of the LM head, of the backward pass, of the optimizer step)."""
    end_bytes: int
    """Live bytes when counting stopped."""


class LiveBytes(TorchDispatchMode):
    """Live bytes by storage of every tensor made while the mode is active."""

    def __init__(
        self,
        devices: tuple[str, ...] = ("meta",),
        true_count: Callable[[torch.Tensor], int] | None = None,
    ) -> None:
        """`devices`: the device types whose memory counts (meta tensors stand for the GPU's;
        CPU tensors next to them, such as the batch before it is moved or optimizer step
        counters, live in host memory)."""
        super().__init__()
        self.devices = devices
        self.region = "build"
        self._live: dict[int, _Storage] = {}
        self._all: list[_Storage] = []
        self._seq = 0
        self.live_bytes = 0
        self._true_count = true_count or (lambda mask: mask.numel())
        self._on_exit: list[Callable[[], None]] = []
        self._start_seq = 0
        self.peak_seq = 0

    # ------------------------------------------------------------------ tracking
    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        self._seq += 1
        record = _Storage(
            storage.nbytes(),
            self.region,
            self._seq,
            shape=tuple(tensor.shape),
            dtype=str(tensor.dtype),
        )
        self._live[key] = record
        self._all.append(record)
        self.live_bytes += record.nbytes
        weakref.finalize(storage, self._free, key, record)

    def _free(self, key: int, record: _Storage) -> None:
        self._seq += 1
        record.died = self._seq
        record.died_region = self.region
        self.live_bytes -= record.nbytes
        if self._live.get(key) is record:
            del self._live[key]

    def set_true_count(self, true_count: Callable[[torch.Tensor], int]) -> None:
        """How many entries of a boolean meta mask are true (for indexing by it)."""
        self._true_count = true_count

    def on_exit(self, undo: Callable[[], None]) -> None:
        """Run `undo` when counting stops (hooks put on shared classes)."""
        self._on_exit.append(undo)

    def __exit__(self, *exc: Any) -> Any:
        try:
            for undo in reversed(self._on_exit):
                undo()
        finally:
            self._on_exit.clear()
        return super().__exit__(*exc)

    def start(self) -> None:
        """Training starts: the peak is taken from here (building and loading the model make
        transient copies a GPU's loader does not)."""
        self._start_seq = self._seq

    def mark_live(self, role: str) -> None:
        """Give every live storage that has no role yet this one."""
        for record in self._live.values():
            if record.role is None:
                record.role = role

    def mark(self, tensors: Any, role: str) -> None:
        """Give the storages of these tensors a role (weights, adapters, gradients, states)."""
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                record = self._live.get(id(t.untyped_storage()))
                if record is not None and record.role not in OUTSIDE_POOL:
                    record.role = role

    @contextlib.contextmanager
    def in_region(self, region: str) -> Iterator[None]:
        before, self.region = self.region, region
        try:
            yield
        finally:
            self.region = before

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            return _meta_scalar(args[0])
        if func is aten.nonzero.default and args[0].device.type == "meta":
            out = torch.empty(
                (self._true_count(args[0]), args[0].dim()), dtype=torch.long, device="meta"
            )
            self._track(out)
            return out
        if func is aten.index.Tensor and args[0].device.type == "meta":
            args = (args[0], self._long_indices(args[1]))
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type in self.devices:
                self._track(t)
        return out

    def _long_indices(self, indices: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """A boolean mask index becomes the long indices of its true entries (as many as
        `true_count` says), so indexing by a mask runs on meta tensors."""
        out: list[torch.Tensor | None] = []
        for index in indices:
            if index is not None and index.dtype == torch.bool:
                rows = self._true_count(index)
                out.extend(torch.empty(rows, dtype=torch.long, device="meta") for _ in index.shape)
            else:
                out.append(index)
        return out

    # ------------------------------------------------------------------ results
    def live_at(self, seq: int) -> list[_Storage]:
        """The storages live just after event `seq` (for looking into a peak)."""
        return [r for r in self._all if r.born <= seq and (r.died is None or r.died > seq)]

    def tally(self) -> Tally:
        """The peak, each component's peak and the composition at the peak, from the log
        (memory outside PyTorch's pool is reported but not part of the peak)."""
        events: list[tuple[int, int, _Storage, str]] = []
        for record in self._all:
            events.append((record.born, record.nbytes, record, record.region))
            if record.died is not None:
                events.append((record.died, -record.nbytes, record, record.died_region))
        events.sort(key=lambda e: e[0])
        current = dict.fromkeys(COMPONENTS, 0)
        peaks = dict.fromkeys(COMPONENTS, 0)
        at_peak = dict(current)
        peak = in_pool = 0
        peak_region = "build"
        started = False
        region_peaks: dict[str, int] = {}
        for seq, delta, record, region in events:
            if not started and seq > self._start_seq:
                started = True
                peaks, at_peak, peak = dict(current), dict(current), in_pool
            component = record.component
            current[component] += delta
            if component not in OUTSIDE_POOL:
                in_pool += delta
            if not started:
                continue
            region_peaks[region] = max(region_peaks.get(region, 0), in_pool)
            peaks[component] = max(peaks[component], current[component])
            if component not in OUTSIDE_POOL and in_pool > peak:
                peak, at_peak, peak_region = in_pool, dict(current), record.region
                self.peak_seq = seq
        return Tally(
            peak_bytes=peak,
            at_peak_bytes=at_peak,
            component_peak_bytes=peaks,
            peak_region=peak_region,
            region_peak_bytes=region_peaks,
            end_bytes=self.live_bytes,
        )


def _meta_scalar(t: torch.Tensor) -> bool | int | float:
    """`.item()` of a meta tensor: true / one, as an unpadded batch with every label valid gives
    for the checks that read one (masks all true, token counts positive)."""
    if t.dtype == torch.bool:
        return True
    if t.dtype.is_floating_point:
        return 1.0
    return 1
