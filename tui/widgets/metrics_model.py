"""The monitor's view of metrics.jsonl: series for the charts, latest values, warnings.

Pure Python, fed the records `runner.runs.MetricsTail` returns; no Textual, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class Series:
    """Points (step, value) in arrival order."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: float, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None


def downsample(steps: list[float], values: list[float], buckets: int) -> tuple[list, list]:
    """At most about 2*`buckets` points that keep the shape: per bucket of consecutive points,
    its lowest and highest point in step order. 100k points become a few hundred, so the chart
    redraws in milliseconds."""
    n = len(steps)
    if n <= 2 * buckets or buckets <= 0:
        return list(steps), list(values)
    out_x: list[float] = []
    out_y: list[float] = []
    size = n / buckets
    for b in range(buckets):
        lo = int(b * size)
        hi = min(n, int((b + 1) * size)) or lo + 1
        chunk = values[lo:hi]
        i_min = lo + min(range(len(chunk)), key=chunk.__getitem__)
        i_max = lo + max(range(len(chunk)), key=chunk.__getitem__)
        for i in sorted({i_min, i_max}):
            out_x.append(steps[i])
            out_y.append(values[i])
    if out_x[-1] != steps[-1]:  # the newest point is always drawn
        out_x.append(steps[-1])
        out_y.append(values[-1])
    return out_x, out_y


@dataclass
class RunMetrics:
    """Everything the monitor draws from the metrics records."""

    train_loss: Series = field(default_factory=Series)
    eval_loss: Series = field(default_factory=Series)
    learning_rate: Series = field(default_factory=Series)
    tokens_per_s: Series = field(default_factory=Series)
    last: dict[str, float] = field(default_factory=dict)
    """Newest value of every numeric key seen."""
    peak_gpu_mem_gib: float | None = None
    """Highest peak memory the training reported."""
    records: int = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def add(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            step = _num(rec.get("step"))
            if step is None:
                continue
            self.records += 1
            for key, raw in rec.items():
                value = _num(raw)
                if value is not None:
                    self.last[key] = value
            loss = _num(rec.get("loss"))
            if loss is not None:
                self.train_loss.add(step, loss)
            ev = _num(rec.get("eval_loss"))
            if ev is not None:
                self.eval_loss.add(step, ev)
            lr = _num(rec.get("learning_rate"))
            if lr is not None:
                self.learning_rate.add(step, lr)
            tps = _num(rec.get("tokens_per_s"))
            if tps is not None:
                self.tokens_per_s.add(step, tps)
            peak = _num(rec.get("peak_gpu_mem_gib"))
            if peak is not None:
                self.peak_gpu_mem_gib = max(self.peak_gpu_mem_gib or 0.0, peak)

    def eval_rising(self) -> str | None:
        """The overfitting warning (eval loss rising since a step while the train loss falls),
        by the rule `tunedeck runs` uses too (`runner.curves.overfitting`)."""
        from runner.curves import Curves, overfitting

        found = overfitting(
            Curves(
                list(zip(self.train_loss.steps, self.train_loss.values, strict=True)),
                list(zip(self.eval_loss.steps, self.eval_loss.values, strict=True)),
            )
        )
        return found.message() + "?" if found else None
