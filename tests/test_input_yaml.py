"""YAML that tunedeck reads: alias bombs and recursive aliases are refused while parsing, and
plain scalars follow YAML 1.2 (so `2e-5` is a number) in `--set` values and preset files."""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from presets import PresetError, load_preset, parse_set
from presets.store import read_yaml
from presets.yaml_io import MAX_EXPANDED_NODES, YamlTooLarge, dump, load


def laughs(levels: int, width: int = 9, indent: str = "  ") -> str:
    """A 'billion laughs' chain: each level is a list of `width` aliases of the one before,
    so level n expands to width**n strings."""
    lines = [f"{indent}l0: &l0 [{', '.join(['lol'] * width)}]"]
    for n in range(1, levels):
        lines.append(f"{indent}l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def bomb_preset(tmp_path: Path) -> Path:
    # 9**9 = 387 million strings under training.report_to, which TRL accepts as a list.
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "name: bomb\nmodel: m\ndataset: {path: d.jsonl}\ntraining:\n"
        "  report_to: &top\n"
        "    anchors:\n" + laughs(9, indent="      ") + "    all: *l8\n"
    )
    return path


def test_a_billion_laughs_preset_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    path = bomb_preset(tmp_path)
    with pytest.raises(PresetError) as err:
        read_yaml(path)
    (line,) = err.value.lines
    assert line.startswith(str(path))
    assert "aliases expand to more than" in line
    assert "line " in line


def test_the_command_refuses_a_bomb_within_a_memory_limit(tmp_path: Path) -> None:
    """The real command, limited to 1.5 GiB of address space: without the check it runs out
    of memory expanding the aliases; with it, it names the file and exits 2."""
    path = bomb_preset(tmp_path)

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 1024**2, 1536 * 1024**2))

    env = {**os.environ, "TUNEDECK_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "presets", "show", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=limit_memory,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert f"{path}: line" in out.stderr and "aliases expand" in out.stderr


def test_a_bomb_in_a_set_value_is_refused() -> None:
    flow = "{" + ", ".join(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 9))
    value = "{l0: &l0 [a, a, a, a, a, a, a, a, a], " + flow[1:] + "}"
    with pytest.raises(PresetError) as err:
        parse_set([f"training.report_to={value}"])
    assert "aliases expand to more than" in err.value.lines[0]


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(YamlTooLarge, match="recursive alias"):
        load("a: &a [1, *a]\n")


def test_ordinary_anchors_and_merge_keys_still_work() -> None:
    data = load("base: &b {r: 8, alpha: 16}\nlora:\n  <<: *b\n  r: 16\nmods: &m [q, v]\nalso: *m\n")
    assert data["lora"] == {"r": 16, "alpha": 16}
    assert data["also"] == ["q", "v"]
    # Under the limit is fine: five levels expand to about 75,000 values in all.
    assert MAX_EXPANDED_NODES == 100_000
    big = load(laughs(5))
    assert len(big["l4"]) == 9 and big["l4"][8][8][8][8] == ["lol"] * 9


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2e-5", 2e-5),
        ("1E3", 1000.0),
        (".5", 0.5),
        ("-1e-4", -1e-4),
        ("+3", 3),
        ("012", 12),
        ("0o17", 15),
        ("0x1f", 31),
        ("true", True),
        ("False", False),
        ("null", None),
        ("yes", "yes"),
        ("on", "on"),
        ("no", "no"),
        ("1:30", "1:30"),
        ("2024-01-01", "2024-01-01"),
    ],
)
def test_set_values_follow_yaml_1_2(text: str, value: object) -> None:
    got = parse_set([f"k={text}"])["k"]
    assert got == value and type(got) is type(value)


def test_set_learning_rate_in_exponent_form(demo_home: Path) -> None:
    preset = load_preset("demo", ["training.learning_rate=2e-5", "training.max_steps=4"])
    assert preset.training["learning_rate"] == pytest.approx(2e-5)
    # 1E1 is a float: max_steps wants an integer and says so.
    with pytest.raises(PresetError, match="max_steps"):
        load_preset("demo", ["training.max_steps=1E1"])


def test_set_yes_is_a_string_with_a_clear_message(demo_home: Path) -> None:
    with pytest.raises(PresetError) as err:
        load_preset("demo", ["training.gradient_checkpointing=yes"])
    assert "gradient_checkpointing: must be true or false, got 'yes'" in str(err.value)
    # Schema booleans accept yes/no as pydantic reads them.
    assert load_preset("demo", ["launch.auto_resume=yes"]).launch.auto_resume is True


def test_preset_files_read_numbers_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nmodel: m\ndataset: {path: d.jsonl}\n"
        "training: {learning_rate: 2e-5, weight_decay: .5}\n"
    )
    preset = load_preset(str(path))
    assert preset.training == {"learning_rate": 2e-5, "weight_decay": 0.5}


@pytest.mark.parametrize(
    "value", ["1e3", "yes", "on", "012", "1:30", "2024-01-01", "null", "", "~", "0o7", ".inf"]
)
def test_strings_that_look_like_other_things_round_trip(value: str) -> None:
    text = dump({"description": value})
    assert load(text)["description"] == value
    # The training process reads config.yaml with PyYAML's own (YAML 1.1) loader.
    assert yaml.safe_load(text)["description"] == value


@pytest.mark.parametrize("value", [2e-5, 1e26, -1e-4, math.inf, 7, True, None])
def test_numbers_round_trip_under_both_readers(value: object) -> None:
    text = dump({"v": value})
    assert load(text)["v"] == value
    assert yaml.safe_load(text)["v"] == value
