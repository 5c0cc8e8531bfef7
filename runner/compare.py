"""Several runs side by side: their curves, the settings in which they differ, speed, time,
money and evaluation results. Reads run folders only (`runner.runs`, `runner.curves`,
`runner.evaluate`); shared by `tunedeck compare` and the app's comparison view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.curves import (
    Curves,
    Overfitting,
    early_stop_text,
    overfitting,
    read_config,
    read_curves,
)
from runner.evaluate import read_eval
from runner.runs import RunError, RunStore, RunSummary

# Settings that differ between any two runs by construction, left out of "what differs".
_ALWAYS_DIFFERENT = ("name",)


@dataclass(frozen=True)
class RunView:
    """One run as the comparison shows it."""

    summary: RunSummary
    config: dict[str, Any]
    curves: Curves
    evaluation: dict[str, Any] | None
    overfitting: Overfitting | None
    early_stopped: str | None

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    @property
    def best_eval(self) -> tuple[float, float] | None:
        """(step, eval loss) of the lowest eval loss."""
        return min(self.curves.eval, key=lambda p: p[1]) if self.curves.eval else None

    def figures(self) -> dict[str, Any]:
        s, best = self.summary, self.best_eval
        ev = self.evaluation or {}
        return {
            "status": s.state.status,
            "step": s.state.step,
            "max_steps": s.state.max_steps,
            "train_loss": s.last_loss,
            "eval_loss": s.last_eval_loss,
            "best_eval_loss": best[1] if best else None,
            "best_eval_step": best[0] if best else None,
            "tokens_per_s": s.tokens_per_s,
            "elapsed_s": s.elapsed_s,
            "cost_usd": s.cost_usd,
            "price_usd_per_h": s.state.price_usd_per_h,
            "base_eval_loss": (ev.get("base") or {}).get("eval_loss"),
            "tuned_eval_loss": (ev.get("tuned") or {}).get("eval_loss"),
            "tuned_rouge_l": ((ev.get("tuned") or {}).get("metrics") or {}).get("rouge_l"),
            "overfitting_turn_step": self.overfitting.turn_step if self.overfitting else None,
            "early_stopped": self.early_stopped,
        }


@dataclass(frozen=True)
class Comparison:
    runs: list[RunView]
    differing: list[tuple[str, list[str]]]
    """Dotted setting -> its value in each run, for the settings not the same in all."""

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": [
                {
                    "run_id": v.run_id,
                    "run_dir": str(v.summary.run_dir),
                    **v.figures(),
                    "curves": {"train": v.curves.train, "eval": v.curves.eval},
                }
                for v in self.runs
            ],
            "differing": {key: values for key, values in self.differing},
        }


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`training.learning_rate`); other values as they are."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def differing_settings(configs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Settings whose values are not the same in every config, in first-seen order."""
    flat = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    out = []
    for key in keys:
        if key in _ALWAYS_DIFFERENT:
            continue
        values = [_text(f.get(key)) for f in flat]
        if len(set(values)) > 1:
            out.append((key, values))
    return out


def resolved_config(raw: dict[str, Any] | None) -> dict[str, Any]:
    """A run's config with the schema's defaults filled in, so a field a run left out compares
    as its default; as it is when it does not validate (an older or damaged config)."""
    from presets.store import PresetError, validate

    if not raw:
        return {}
    try:
        return validate(raw, "config.yaml").model_dump(mode="json")
    except PresetError:
        return raw


def view_run(summary: RunSummary) -> RunView:
    run_dir = Path(summary.run_dir)
    c = read_curves(run_dir)
    config = resolved_config(read_config(run_dir))
    return RunView(
        summary=summary,
        config=config,
        curves=c,
        evaluation=read_eval(run_dir),
        overfitting=overfitting(c),
        early_stopped=early_stop_text(summary.state, config, c),
    )


def compare_runs(store: RunStore, run_ids: list[str]) -> Comparison:
    """The named runs side by side; RunError for fewer than two, an unknown one or the same run
    named twice."""
    if len(run_ids) < 2:
        raise RunError(["compare needs at least two runs"])
    summaries = [store.get(r) for r in run_ids]
    seen = [s.run_id for s in summaries]
    twice = sorted({r for r in seen if seen.count(r) > 1})
    if twice:
        raise RunError([f"{', '.join(twice)}: named more than once"])
    views = [view_run(s) for s in summaries]
    return Comparison(views, differing_settings([v.config for v in views]))
