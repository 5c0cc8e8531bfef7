"""The preset schema, the shipped presets, overrides and the messages for bad presets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from presets import (
    Preset,
    PresetError,
    derive_preset,
    list_presets,
    load_preset,
    parse_set,
    preset_to_yaml,
    save_user_preset,
    validate,
)
from presets.store import builtin_dir
from presets.trl_fields import trl_fields

SHIPPED = sorted(p.stem for p in builtin_dir().glob("*.yaml"))


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEDECK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNEDECK_RUNS", raising=False)
    return tmp_path / "home"


def test_at_least_the_six_kinds_of_preset_ship() -> None:
    presets = {e.name: e.preset for e in list_presets()}
    assert all(p is not None for p in presets.values()), presets
    kinds = {(p.trainer, p.method, p.launch.num_gpus > 1) for p in presets.values() if p}
    assert ("sft", "qlora", False) in kinds
    assert ("sft", "lora", False) in kinds
    assert ("sft", "full", False) in kinds
    assert ("dpo", "lora", False) in kinds
    assert any(
        p and p.launch.strategy == "fsdp" and p.launch.num_gpus > 1 for p in presets.values()
    )
    assert "demo" in presets


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_validates_and_round_trips(name: str) -> None:
    preset = load_preset(name)
    assert preset.name == name
    again = validate(yaml.safe_load(preset_to_yaml(preset)), "round trip")
    assert again == preset


def test_every_field_has_a_docstring() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for field_name, field in model.model_fields.items():
            if not (field.description or "").strip():
                missing.append(f"{model.__name__}.{field_name}")
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                missing += walk(ann)
        return missing

    assert walk(Preset) == []


def test_set_takes_dotted_keys_with_yaml_types() -> None:
    assert parse_set(["training.max_steps=40", "lora.r=32", "training.bf16=true"]) == {
        "training": {"max_steps": 40, "bf16": True},
        "lora": {"r": 32},
    }
    assert parse_set(["lora.target_modules=[q_proj, v_proj]"]) == {
        "lora": {"target_modules": ["q_proj", "v_proj"]}
    }
    preset = load_preset("demo", ["training.max_steps=7", "lora.r=4", "lora.dropout=0"])
    assert preset.training["max_steps"] == 7
    assert preset.lora.r == 4
    # other training keys survive a --set into the same mapping
    assert preset.training["learning_rate"] == load_preset("demo").training["learning_rate"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.r=0"], "lora.r: must be a positive integer, got 0"),
        (["lora.r=abc"], "lora.r: must be an integer, got 'abc'"),
        (["training.learning_rate=-0.001"], "training.learning_rate: must be positive, got -0.001"),
        (["training.lerning_rate=0.1"], "did you mean `learning_rate`"),
        (["training.beta=0.1"], "training.beta: not an argument of TRL"),
        (["training.optim=adamw8"], "training.optim: 'adamw8' is not allowed"),
        (["training.max_steps=forty"], "training.max_steps: must be an integer, got 'forty'"),
        (["training.output_dir=/tmp/x"], "training.output_dir: not allowed in a preset"),
        (["training.bf16=true", "training.fp16=true"], "choose one"),
        (["colour=blue"], "colour: unknown field; allowed here: name, description, model"),
        (["lora.rank=8"], "lora.rank: unknown field; allowed here: r, alpha"),
        (["trainer=ppo"], "trainer: must be 'sft' or 'dpo', got 'ppo'"),
        (["method=half"], "method: must be 'full', 'lora' or 'qlora', got 'half'"),
        (["model="], "model: must not be empty"),
        (["lora.dropout=1.5"], "lora.dropout: must be less than 1"),
        (["launch.num_gpus=4"], "choose ddp, fsdp or deepspeed-zero3"),
        (["launch.strategy=horovod"], "launch.strategy: must be"),
        (["price_usd_per_h=-2"], "price_usd_per_h: must be at least 0"),
        (
            ["lora.target_modules=[]"],
            "lora.target_modules: must be `all-linear` or a non-empty list",
        ),
    ],
)
def test_bad_values_name_the_file_the_field_and_what_is_allowed(
    overrides: list[str], expected: str
) -> None:
    with pytest.raises(PresetError) as info:
        load_preset("demo", overrides)
    text = str(info.value)
    assert "demo.yaml" in text
    assert expected in text


def test_a_bad_file_on_disk(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\ndataset: {path: d.jsonl}\nlora: {r: 0}\n")
    with pytest.raises(PresetError) as info:
        load_preset(str(bad))
    lines = info.value.lines
    assert any(line.endswith("x.yaml: lora.r: must be a positive integer, got 0") for line in lines)
    assert any("x.yaml: model: required" in line for line in lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed\n", "not valid YAML"),
        ("", "a preset must be a YAML mapping of fields, got empty"),
        ("- a\n- b\n", "got a list"),
        ("name: x\nmodel: m\n", "dataset: required"),
    ],
)
def test_unreadable_presets(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PresetError, match=expected):
        load_preset(str(path))


def test_binary_preset_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(PresetError, match="not UTF-8"):
        load_preset(str(path))


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(PresetError, match=r"no such preset; known presets: .*demo"):
        load_preset("nope")


def test_new_user_preset_is_saved_and_shadows_nothing_shipped(_home: Path) -> None:
    preset = derive_preset("mine", "demo", ["training.max_steps=5"])
    path = save_user_preset(preset)
    assert path.parent == _home / "config" / "presets"
    assert load_preset("mine").training["max_steps"] == 5
    with pytest.raises(PresetError, match="already exists"):
        save_user_preset(preset)
    with pytest.raises(PresetError, match="shipped presets are never overwritten"):
        save_user_preset(derive_preset("demo", "demo"))
    assert {e.name: e.source for e in list_presets()}["mine"] == "user"


def test_a_broken_user_preset_is_listed_with_its_error(_home: Path) -> None:
    folder = _home / "config" / "presets"
    folder.mkdir(parents=True)
    (folder / "broken.yaml").write_text(
        "name: broken\nmodel: m\ndataset: {path: d}\nlora: {r: -1}\n"
    )
    entry = {e.name: e for e in list_presets()}["broken"]
    assert entry.preset is None and entry.error is not None
    assert "lora.r: must be a positive integer, got -1" in entry.error.lines[0]


def test_trl_field_table_matches_the_installed_trl() -> None:
    """The shipped table of TRL argument names is what the installed TRL really has."""
    code = (
        "import dataclasses, json, trl\n"
        "from trl import SFTConfig, DPOConfig\n"
        "print(json.dumps([trl.__version__, sorted(f.name for f in dataclasses.fields(SFTConfig) if f.init),"
        " sorted(f.name for f in dataclasses.fields(DPOConfig) if f.init)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    version, sft, dpo = json.loads(out.stdout.strip().splitlines()[-1])
    table = trl_fields()
    if version != table["trl_version"]:
        pytest.skip(f"installed TRL {version} differs from the table's {table['trl_version']}")
    assert sorted(table["sft"]) == sft
    assert sorted(table["dpo"]) == dpo
