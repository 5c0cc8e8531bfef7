"""Checks `training:` against TRL's own `SFTConfig` / `DPOConfig` fields.

The field list is generated from the installed TRL by `tools/gen_trl_fields.py` into
`trl_fields.json`, so a preset is checked without importing TRL (which would pull in torch). The
training entry point checks again with the real config class, in case the installed TRL differs.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib.resources import files
from typing import Any

# Set by tunedeck itself from the run folder; a preset value would be silently wrong.
RESERVED = {
    "output_dir": "the run folder's checkpoints/ (set by tunedeck)",
    "resume_from_checkpoint": "`tunedeck resume RUN` (set by tunedeck)",
    "logging_dir": "the run folder (set by tunedeck)",
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


def training_problems(trainer: str, training: dict[str, Any]) -> list[tuple[str, str]]:
    """Every bad `training.<key>` as (key, message): unknown, reserved, wrong type or out of
    range. Messages say what would be right."""
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
        if isinstance(value, int | float) and not isinstance(value, bool):
            if key in _POSITIVE and value <= 0:
                problems.append((key, f"must be positive, got {value!r}"))
            elif key in _NON_NEGATIVE and value < 0:
                problems.append((key, f"must be zero or more, got {value!r}"))
            elif key == "max_steps" and value == 0:
                problems.append((key, "must be positive (or -1 to train by epochs), got 0"))
    if training.get("bf16") and training.get("fp16"):
        problems.append(("fp16", "bf16 and fp16 are both true; choose one"))
    return problems
