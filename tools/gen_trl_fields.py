"""Regenerate presets/trl_fields.json from the installed TRL.

The preset validator checks `training:` keys and value types against this file so that checking a
preset never has to import TRL (and torch). Run it after upgrading TRL:

    .venv/bin/python tools/gen_trl_fields.py
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path

import trl
from trl import DPOConfig, SFTConfig

OUT = Path(__file__).resolve().parents[1] / "presets" / "trl_fields.json"


def _kinds(tp: object) -> tuple[set[str], list[str] | None]:
    """Reduce a dataclass annotation to JSON kinds and, for enums and literals, the choices."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        choices: list[str] | None = None
        for arg in typing.get_args(tp):
            k, c = _kinds(arg)
            kinds |= k
            if c:
                choices = (choices or []) + c
        if "str" in kinds and "enum" not in kinds:
            choices = (
                None  # a free string is allowed; `Enum | str` still means one of the enum values
            )
        return kinds, choices
    if origin is typing.Literal:
        return {"str"}, [str(a) for a in typing.get_args(tp)]
    if origin in (list, tuple):
        return {"list"}, None
    if origin is dict:
        return {"dict"}, None
    if tp is type(None):
        return {"null"}, None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum"}, [m.value for m in tp]
    if tp is bool:
        return {"bool"}, None
    if tp is int:
        return {"int"}, None
    if tp is float:
        return {"float"}, None
    if tp is str:
        return {"str"}, None
    if tp in (list, tuple):
        return {"list"}, None
    if tp is dict:
        return {"dict"}, None
    return {"any"}, None


def describe(cls: type) -> dict[str, dict[str, object]]:
    hints = typing.get_type_hints(cls)
    fields: dict[str, dict[str, object]] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kinds, choices = _kinds(hints.get(f.name, typing.Any))
        entry: dict[str, object] = {"kinds": sorted(kinds)}
        if choices:
            entry["choices"] = sorted({str(c) for c in choices})
        fields[f.name] = entry
    return fields


def main() -> None:
    data = {
        "trl_version": trl.__version__,
        "sft": describe(SFTConfig),
        "dpo": describe(DPOConfig),
    }
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(
        f"wrote {OUT} (TRL {trl.__version__}: {len(data['sft'])} SFT, {len(data['dpo'])} DPO fields)"
    )


if __name__ == "__main__":
    main()
