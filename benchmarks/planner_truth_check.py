"""The counter of `benchmarks/planner_truth.py` checked against real memory.

`check_counter(case)` runs the case twice with the runner's CPU semantics (fp32, no autocast,
the CPU's own kernels): once on the meta device, once on real CPU tensors under
`torch.profiler` with memory profiling, which reports every allocation and free the CPU
allocator makes. At each probe point (before and after every module's forward, at each phase
of the optimizer step) the counter puts down a marker allocation of a size no tensor has; the
allocator's running total just before the marker is the real live memory at that moment, and
must equal what the counter says. The meta run's figures must equal the CPU run's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from benchmarks.planner_truth_case import Case
from benchmarks.planner_truth_count import LiveBytes, Tally
from benchmarks.planner_truth_step import measure

# Marker sizes: odd byte counts far from any tensor's (tensors here are multiples of 4 bytes).
MARKER_BASE_BYTES = 999_999
MARKER_STEP_BYTES = 2


@dataclass
class CounterCheck:
    meta: Tally
    cpu: Tally
    probes: int
    """Probe points compared."""
    mismatched: int
    """Probe points where the counter and the allocator disagreed."""
    largest_difference_bytes: int
    allocator_peak_bytes: int
    """The most the CPU allocator held at once, op-internal scratch included."""

    @property
    def meta_equals_cpu(self) -> bool:
        return (
            self.meta.peak_bytes == self.cpu.peak_bytes
            and self.meta.at_peak_bytes == self.cpu.at_peak_bytes
            and self.meta.component_peak_bytes == self.cpu.component_peak_bytes
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "meta_peak_bytes": self.meta.peak_bytes,
            "cpu_peak_bytes": self.cpu.peak_bytes,
            "meta_equals_cpu": self.meta_equals_cpu,
            "probes": self.probes,
            "mismatched": self.mismatched,
            "largest_difference_bytes": self.largest_difference_bytes,
            "allocator_peak_bytes": self.allocator_peak_bytes,
        }


class _Markers:
    """Puts down one marker allocation per probe and remembers what the counter said."""

    def __init__(self) -> None:
        self.expected: list[tuple[int, int]] = []

    def __call__(self, counter: LiveBytes) -> None:
        size = MARKER_BASE_BYTES + MARKER_STEP_BYTES * (len(self.expected) % 1000) + 1
        self.expected.append((size, counter.live_bytes))
        with _disable_current_modes():  # the counter does not see its own markers
            marker = torch.empty(size, dtype=torch.uint8)
        del marker


def _allocations(prof: Any) -> list[tuple[int, int, int, bool]]:
    """Every allocation and free the CPU allocator reported, in order: (time ns, bytes, +/-,
    address, whether an ATen operator made it)."""
    out: list[tuple[int, int, int, bool]] = []
    # depth first in the order events happened, so that a sort by time keeps ties in order
    stack = list(reversed(prof.profiler.kineto_results.experimental_event_tree()))
    while stack:
        node = stack.pop()
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation":
            by_op = node.parent is not None and node.parent.name.startswith("aten::")
            out.append((node.start_time_ns, int(fields.alloc_size), int(fields.ptr), by_op))
        stack.extend(reversed(node.children))
    out.sort(key=lambda item: item[0])
    return out


def _allocator_totals(
    allocations: list[tuple[int, int, int, bool]], markers: _Markers, batches: set[int]
) -> tuple[list[int], int]:
    """The allocator's running total before each marker, in order, and its peak from the
    first marker (the step's start) on. Markers are
    left out, and so are host-side objects that no ATen operator makes: Python numbers
    wrapped for an operator (autograd may keep them) and the RNG states activation
    checkpointing saves and restores, which on a GPU are host memory; and the batches as the
    data loader made them, before their copy to the device."""
    sizes = [size for size, _ in markers.expected]
    marker_sizes = set(sizes)
    host: set[int] = set()
    total = peak = 0
    seen: list[int] = []
    for _, nbytes, address, in_op in allocations:
        if abs(nbytes) in marker_sizes:
            if nbytes > 0 and len(seen) < len(sizes) and nbytes == sizes[len(seen)]:
                seen.append(total)
            continue
        if nbytes > 0 and (not in_op or address in batches):
            host.add(address)
            continue
        if nbytes < 0 and address in host:
            host.discard(address)
            continue
        total += nbytes
        if seen:  # from the first probe on: building the model is not part of the step
            peak = max(peak, total)
    return seen, peak


def check_counter(case: Case, tokenizer: Any = None, cpu_autocast: bool = False) -> CounterCheck:
    """The counter on the meta device and on real CPU tensors, against the CPU allocator.
    With `cpu_autocast`, the CPU run trains under torch's bf16 autocast and the meta run under
    the emulation given torch's CPU lists: the emulation's mechanism against the real one."""
    from torch.profiler import ProfilerActivity, profile

    case = replace(case, gpu=False)
    meta = measure(case, "meta", tokenizer, cpu_autocast=cpu_autocast)
    markers = _Markers()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # the meta device runs SDPA's math path; the CPU would pick its flash kernel
    with (
        sdpa_kernel(SDPBackend.MATH),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        cpu = measure(case, "cpu", tokenizer, probe=markers, cpu_autocast=cpu_autocast)
    real, allocator_peak = _allocator_totals(_allocations(prof), markers, cpu.host_addresses)
    counted = [live for _, live in markers.expected]
    differences = [abs(a - b) for a, b in zip(real, counted, strict=False)]
    missing = len(counted) - len(real)
    return CounterCheck(
        meta=meta.tally,
        cpu=cpu.tally,
        probes=len(counted),
        mismatched=sum(1 for d in differences if d) + missing,
        largest_difference_bytes=max(differences, default=0),
        allocator_peak_bytes=allocator_peak,
    )
