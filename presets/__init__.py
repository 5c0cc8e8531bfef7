"""Run presets: the typed schema, the shipped YAML files and the user's own.

The names below are loaded on first use, so `import presets.locations` (which every command needs)
does not pay for building the pydantic schema.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DatasetSpec": "presets.schema",
    "LaunchSpec": "presets.schema",
    "LoraSpec": "presets.schema",
    "Preset": "presets.schema",
    "QuantizationSpec": "presets.schema",
    "PresetEntry": "presets.store",
    "PresetError": "presets.store",
    "derive_preset": "presets.store",
    "list_presets": "presets.store",
    "load_preset": "presets.store",
    "parse_set": "presets.store",
    "preset_to_yaml": "presets.store",
    "save_user_preset": "presets.store",
    "validate": "presets.store",
}

__all__ = [
    "DatasetSpec",
    "LaunchSpec",
    "LoraSpec",
    "Preset",
    "PresetEntry",
    "PresetError",
    "QuantizationSpec",
    "derive_preset",
    "list_presets",
    "load_preset",
    "parse_set",
    "preset_to_yaml",
    "save_user_preset",
    "validate",
]

if TYPE_CHECKING:
    from presets.schema import DatasetSpec, LaunchSpec, LoraSpec, Preset, QuantizationSpec
    from presets.store import (
        PresetEntry,
        PresetError,
        derive_preset,
        list_presets,
        load_preset,
        parse_set,
        preset_to_yaml,
        save_user_preset,
        validate,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'presets' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
