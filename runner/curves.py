"""What a run's loss curves say: the train and eval series of metrics.jsonl, overfitting (train
loss falling while eval loss rises, with the step where eval loss turned) and early stopping.

Pure functions over the records `runner.runs.read_metrics` returns, plus one reader; shared by
`tunedeck runs`, the monitor and the comparison, so all three say the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.runs import METRICS_FILE, RunState, read_metrics

# Evaluations after the best one, all worse, before the rise counts (one worse is noise).
RISING_EVALS = 2


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Curves:
    """Train loss and eval loss as (step, value) points in step order of arrival."""

    train: list[tuple[float, float]]
    eval: list[tuple[float, float]]


def curves(records: list[dict[str, Any]]) -> Curves:
    train, evals = [], []
    for record in records:
        step = _num(record.get("step"))
        if step is None:
            continue
        loss, eval_loss = _num(record.get("loss")), _num(record.get("eval_loss"))
        if loss is not None:
            train.append((step, loss))
        if eval_loss is not None:
            evals.append((step, eval_loss))
    return Curves(train, evals)


def read_curves(run_dir: Path) -> Curves:
    return curves(read_metrics(run_dir / METRICS_FILE))


@dataclass(frozen=True)
class Overfitting:
    """Eval loss rising since `turn_step` while the train loss kept falling."""

    turn_step: float
    """Step of the lowest eval loss, after which it only rose."""
    best_eval_loss: float
    last_step: float
    last_eval_loss: float
    train_before: float
    """Mean train loss over the evaluation interval that ended at the turn."""
    train_after: float
    """Mean train loss since the turn."""

    def message(self) -> str:
        return (
            f"eval loss rising since step {self.turn_step:g} ({self.best_eval_loss:.3f} → "
            f"{self.last_eval_loss:.3f} at step {self.last_step:g}) while train loss falls "
            f"({self.train_before:.3f} → {self.train_after:.3f}): overfitting"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "turn_step": self.turn_step,
            "best_eval_loss": self.best_eval_loss,
            "last_step": self.last_step,
            "last_eval_loss": self.last_eval_loss,
            "train_loss_before": self.train_before,
            "train_loss_after": self.train_after,
            "message": self.message(),
        }


def _mean(points: list[tuple[float, float]], after: float, upto: float) -> float | None:
    values = [v for s, v in points if after < s <= upto]
    return sum(values) / len(values) if values else None


def overfitting(c: Curves) -> Overfitting | None:
    """Overfitting when every one of at least `RISING_EVALS` evaluations after the lowest eval
    loss is above it, and the train loss since then is lower than just before it."""
    if len(c.eval) < RISING_EVALS + 1:
        return None
    best = min(range(len(c.eval)), key=lambda i: c.eval[i][1])
    after = c.eval[best + 1 :]
    turn_step, best_loss = c.eval[best]
    if len(after) < RISING_EVALS or any(v <= best_loss for _, v in after):
        return None
    previous_step = c.eval[best - 1][0] if best > 0 else -math.inf
    before = _mean(c.train, previous_step, turn_step)
    since = _mean(c.train, turn_step, after[-1][0])
    if before is None or since is None or since >= before:
        return None
    return Overfitting(turn_step, best_loss, after[-1][0], after[-1][1], before, since)


def early_stop_text(state: RunState, config: dict[str, Any] | None, c: Curves) -> str | None:
    """`stopped early at step 60 (best eval loss 5.814 at step 50, kept)` for a completed run
    that early stopping ended before its last step; None otherwise."""
    if state.status != "completed" or not state.max_steps or state.step >= state.max_steps:
        return None
    evaluation = (config or {}).get("evaluation") or {}
    if not isinstance(evaluation, dict) or not evaluation.get("early_stopping_patience"):
        return None
    text = f"stopped early at step {state.step} of {state.max_steps}"
    if c.eval:
        step, loss = min(c.eval, key=lambda p: p[1])
        text += f" (best eval loss {loss:.3f} at step {step:g}, kept as the output)"
    return text


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's config.yaml as plain data; None when it cannot be read."""
    import yaml

    from runner.runs import CONFIG_FILE

    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def run_signals(run_dir: Path, state: RunState) -> dict[str, Any]:
    """What `tunedeck runs` adds about a run's curves: overfitting and early stopping."""
    c = read_curves(run_dir)
    over = overfitting(c)
    return {
        "overfitting": over.to_json() if over else None,
        "early_stopped": early_stop_text(state, read_config(run_dir), c),
    }
