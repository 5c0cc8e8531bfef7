"""Checks `training:` against TRL's own `SFTConfig` / `DPOConfig` fields.

The field list is generated from the installed TRL by `tools/gen_trl_fields.py` into
`trl_fields.json`, so a preset is checked without importing TRL (which would pull in torch). The
training entry point checks again with the real config class, in case the installed TRL differs.
"""

from __future__ import annotations

import difflib
import json
import math
from functools import cache
from importlib.resources import files
from typing import Any

# Set by tunedeck itself from the run folder; a preset value would be silently wrong.
RESERVED = {
    "output_dir": "the run folder's checkpoints/ (set by tunedeck)",
    "resume_from_checkpoint": "`tunedeck resume RUN` (set by tunedeck)",
}

_POSITIVE = {
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "save_steps",
    "eval_steps",
    "logging_steps",
}
_NON_NEGATIVE = {"weight_decay", "warmup_steps", "max_grad_norm", "beta", "seed"}
# numpy's random generator, which the Trainer seeds, takes 0 <= seed < 2**32 (and fails at start).
_SEEDS = {"seed", "data_seed"}
SEED_LIMIT = 2**32
# Counts of steps, epochs, sequences or tokens. Far above any real run (a billion steps at 0.1 s
# each is three years) and low enough to catch a typo such as 1e26 before it reaches the Trainer.
_COUNTS = {
    "max_steps",
    "num_train_epochs",
    "save_steps",
    "eval_steps",
    "logging_steps",
    "warmup_steps",
    "gradient_accumulation_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "max_length",
    "max_prompt_length",
    "max_completion_length",
}
MAX_COUNT = 10**9
# Any integer the libraries keep in a C long or a tensor must fit in 64 bits.
INT64_LIMIT = 2**63


@cache
def trl_fields() -> dict[str, Any]:
    """The generated field table: {"trl_version": ..., "sft": {...}, "dpo": {...}}."""
    text = files("presets").joinpath("trl_fields.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "dict": "a mapping",
    "null": "null",
    "enum": "one of the allowed names",
}


def _accepts(kinds: list[str], value: Any) -> bool:
    kind = _kind_of(value)
    if "any" in kinds:
        return True
    if kind in kinds:
        return True
    if kind == "int" and "float" in kinds:
        return True
    return kind == "str" and "enum" in kinds


def _non_finite(value: Any) -> float | None:
    """The first NaN or infinity in `value` (a number, or one inside lists and mappings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    children = value.values() if isinstance(value, dict) else value
    if isinstance(children, list | tuple) or isinstance(value, dict):
        for child in children:
            found = _non_finite(child)
            if found is not None:
                return found
    return None


def _range_problem(key: str, value: int | float) -> str | None:
    """What is wrong with a number's range, or None."""
    if key in _SEEDS and not 0 <= value < SEED_LIMIT:
        return f"must be at least 0 and below 2**32 (numpy's seed range), got {value!r}"
    if key == "max_steps":
        if value == 0 or (value < 0 and value != -1):
            return f"must be positive, or -1 to train by num_train_epochs, got {value!r}"
    elif key in _POSITIVE and value <= 0:
        return f"must be positive, got {value!r}"
    elif key in _NON_NEGATIVE and value < 0:
        return f"must be zero or more, got {value!r}"
    if key in _COUNTS and value > MAX_COUNT:
        return f"must be at most {MAX_COUNT:,} (far beyond any real run), got {value!r}"
    if isinstance(value, int) and abs(value) >= INT64_LIMIT:
        return f"must fit in 64 bits, got {value!r}"
    return None


def _cross_field_problems(training: dict[str, Any]) -> list[tuple[str, str]]:
    """Arguments that are fine alone and wrong together (the Trainer finds some only once the
    model is loaded, the rest never)."""
    problems: list[tuple[str, str]] = []
    if training.get("bf16") and training.get("fp16"):
        problems.append(("fp16", "bf16 and fp16 are both true; choose one"))
    if training.get("save_strategy") == "best":
        if not training.get("metric_for_best_model"):
            problems.append(
                (
                    "metric_for_best_model",
                    "required when save_strategy is `best`: the metric that picks the best "
                    "checkpoint, e.g. eval_loss",
                )
            )
        if training.get("eval_strategy", "no") == "no":
            problems.append(
                (
                    "save_strategy",
                    "`best` saves only after an evaluation, and eval_strategy is `no`: no "
                    "checkpoint would ever be written (set eval_strategy, or save_strategy steps)",
                )
            )
    return problems


def training_problems(trainer: str, training: dict[str, Any]) -> list[tuple[str, str]]:
    """Every bad `training.<key>` as (key, message): unknown, reserved, wrong type, not finite,
    out of range, or at odds with another key. Messages say what would be right."""
    table = trl_fields()
    fields: dict[str, Any] = table[trainer]
    config = "SFTConfig" if trainer == "sft" else "DPOConfig"
    problems: list[tuple[str, str]] = []
    for key, value in training.items():
        if key in RESERVED:
            problems.append((key, f"not allowed in a preset; it is {RESERVED[key]}"))
            continue
        spec = fields.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.75)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            other = "dpo" if trainer == "sft" else "sft"
            if key in table[other]:
                hint = f"; it belongs to the {other} trainer, not {trainer}"
            problems.append((key, f"not an argument of TRL {table['trl_version']} {config}{hint}"))
            continue
        kinds: list[str] = spec["kinds"]
        if not _accepts(kinds, value):
            allowed = " or ".join(_KIND_WORDS.get(k, k) for k in kinds if k != "any")
            problems.append((key, f"must be {allowed}, got {value!r}"))
            continue
        choices = spec.get("choices")
        if choices and isinstance(value, str) and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
            problems.append((key, f"{value!r} is not allowed{hint}; one of {shown}"))
            continue
        bad_number = _non_finite(value)
        if bad_number is not None:
            what = "a finite number" if isinstance(value, float) else "only finite numbers"
            verb = "be" if isinstance(value, float) else "hold"
            problems.append((key, f"must {verb} {what}, got {bad_number!r}"))
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            problem = _range_problem(key, value)
            if problem:
                problems.append((key, problem))
    return problems + _cross_field_problems(training)
