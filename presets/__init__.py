"""Run presets: the typed schema, the shipped YAML files and the user's own."""

from presets.schema import (
    DatasetSpec,
    LaunchSpec,
    LoraSpec,
    Preset,
    QuantizationSpec,
)
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
