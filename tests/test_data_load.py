"""Loading every supported format and file type into the columns TRL expects."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from presets.schema import DatasetSpec
from runner.data import DataError, detect_format, load_training_data

REPO = Path(__file__).resolve().parents[1]


def chat(question: str, answer: str, system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_messages_jsonl_keeps_multi_turn_conversations(tmp_path: Path) -> None:
    rows = [
        {"messages": chat("Hi", "Hello!", system="Be brief.")},
        {"messages": [*chat("1+1?", "2"), *chat("and 2+2?", "4")]},
    ]
    train, evaluation = load_training_data(
        DatasetSpec(path=str(write_jsonl(tmp_path / "c.jsonl", rows)))
    )
    assert evaluation is None
    assert train.column_names == ["messages"]
    assert train[0]["messages"] == rows[0]["messages"]
    assert len(train[1]["messages"]) == 4


def test_sharegpt_json_array_maps_roles(tmp_path: Path) -> None:
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "Q"},
                {"from": "gpt", "value": "A"},
            ]
        }
    ]
    path = tmp_path / "share.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    train, _ = load_training_data(DatasetSpec(path=str(path)))
    assert train[0]["messages"] == chat("Q", "A", system="S")


def test_alpaca_csv_joins_instruction_and_input(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["instruction", "input", "output"])
        writer.writerow(["Translate to French", "cat", "chat"])
        writer.writerow(["Say hi", "", "hi"])
    train, _ = load_training_data(DatasetSpec(path=str(path)))
    assert train[0]["messages"] == chat("Translate to French\n\ncat", "chat")
    assert train[1]["messages"] == chat("Say hi", "hi")


def test_text_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "three"]}), path)
    train, _ = load_training_data(DatasetSpec(path=str(path)))
    assert train.column_names == ["text"]
    assert train["text"] == ["one", "two", "three"]


def test_prompt_completion_strings_and_conversations(tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    train, _ = load_training_data(DatasetSpec(path=str(plain)))
    assert train[0] == {"prompt": "2+2=", "completion": "4"}
    conv = write_jsonl(
        tmp_path / "pcc.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "completion": [{"role": "assistant", "content": "A"}],
            }
        ],
    )
    train, _ = load_training_data(DatasetSpec(path=str(conv)))
    assert train[0]["completion"] == [{"role": "assistant", "content": "A"}]


def test_preference_pairs_for_dpo_and_sft(tmp_path: Path) -> None:
    rows = [{"prompt": "Q", "chosen": "good", "rejected": "bad"}]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    train, _ = load_training_data(DatasetSpec(path=str(path)), trainer="dpo")
    assert train[0] == rows[0]
    # SFT on preference data learns the chosen answers.
    train, _ = load_training_data(DatasetSpec(path=str(path)), trainer="sft")
    assert train[0] == {"prompt": "Q", "completion": "good"}
    conv = write_jsonl(
        tmp_path / "prefc.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            }
        ],
    )
    train, _ = load_training_data(DatasetSpec(path=str(conv)), trainer="dpo")
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train[0]["rejected"] == [{"role": "assistant", "content": "bad"}]


def test_dpo_refuses_chat_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": chat("Q", "A")}])
    with pytest.raises(DataError) as info:
        load_training_data(DatasetSpec(path=str(path)), trainer="dpo")
    assert any("trainer dpo needs preference rows" in line for line in info.value.lines)


def test_format_override_and_detection(tmp_path: Path) -> None:
    assert detect_format({"instruction": "i", "output": "o"}) == "alpaca"
    assert detect_format({"prompt": "p", "chosen": "c", "rejected": "r"}) == "preference"
    assert detect_format({"foo": 1}) is None
    # A row with both `text` and `prompt`/`completion` reads as prompt/completion unless forced.
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "T", "prompt": "P", "completion": "C"}])
    train, _ = load_training_data(DatasetSpec(path=str(path)))
    assert train.column_names == ["prompt", "completion"]
    train, _ = load_training_data(DatasetSpec(path=str(path), format="text"))
    assert train.column_names == ["text"]


def test_bad_rows_raise_with_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = json.dumps({"messages": chat("Q", "A")})
    bad_role = json.dumps(
        {"messages": [{"role": "user", "content": "x"}, {"role": "assitant", "content": "y"}]}
    )
    path.write_text(f"{good}\n{{broken\n{bad_role}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_training_data(DatasetSpec(path=str(path)))
    lines = info.value.lines
    assert "2 of 3 rows cannot be used" in lines[0]
    assert lines[1].startswith("train.jsonl:2: not valid JSON")
    assert lines[2] == (
        "train.jsonl:3: messages[1].role is 'assitant'; expected one of system, user, assistant"
    )


def test_missing_path_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_training_data(DatasetSpec(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match="empty dataset"):
        load_training_data(DatasetSpec(path=str(tmp_path / "empty.jsonl")))


def test_folder_of_mixed_files_with_test_split(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "part-a.jsonl", [{"messages": chat("a", "1")}])
    pq.write_table(pa.table({"messages": [chat("b", "2")]}), folder / "part-b.parquet")
    write_jsonl(folder / "test.jsonl", [{"messages": chat("t", "3")}])
    (folder / "README.md").write_text("not data\n")
    train, evaluation = load_training_data(DatasetSpec(path=str(folder)))
    assert len(train) == 2
    assert evaluation is not None and evaluation[0]["messages"] == chat("t", "3")


def test_eval_path_and_seeded_fraction(tmp_path: Path) -> None:
    rows = [{"messages": chat(f"q{i}", f"a{i}")} for i in range(50)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    extra = write_jsonl(tmp_path / "held.jsonl", rows[:3])
    train, evaluation = load_training_data(DatasetSpec(path=str(path), eval_path=str(extra)))
    assert len(train) == 50 and evaluation is not None and len(evaluation) == 3

    spec = DatasetSpec(path=str(path), eval_fraction=0.2)
    train_a, eval_a = load_training_data(spec, seed=1)
    _, eval_b = load_training_data(spec, seed=1)
    _, eval_c = load_training_data(spec, seed=2)
    assert eval_a is not None and eval_b is not None and eval_c is not None
    assert (len(train_a), len(eval_a)) == (40, 10)
    assert eval_a["messages"] == eval_b["messages"]
    assert eval_a["messages"] != eval_c["messages"]
    held = {m[0]["content"] for m in eval_a["messages"]}
    assert not held & {m[0]["content"] for m in train_a["messages"]}

    tiny = write_jsonl(tmp_path / "tiny.jsonl", rows[:2])
    with pytest.raises(DataError, match="eval_fraction"):
        load_training_data(DatasetSpec(path=str(tiny), eval_fraction=0.1))


def test_hub_id_offline_is_a_clear_error(tmp_path: Path) -> None:
    code = (
        "from presets.schema import DatasetSpec\n"
        "from runner.data import load_training_data, DataError\n"
        "try:\n"
        "    load_training_data(DatasetSpec(path='someorg/no-such-data', eval_split='test'))\n"
        "except DataError as exc:\n"
        "    print('\\n'.join(exc.lines))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "'someorg/no-such-data' is not a local file or folder" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_converted_rows_are_what_trl_expects(tmp_path: Path) -> None:
    trl_data = pytest.importorskip("trl.data_utils")
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}],
    )
    train, _ = load_training_data(DatasetSpec(path=str(path)))
    assert trl_data.is_conversational(train[0])
    pref = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "chosen": [
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "good"},
                ],
                "rejected": [
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "bad"},
                ],
            }
        ],
    )
    train, _ = load_training_data(DatasetSpec(path=str(pref)), trainer="dpo")
    # An implicit prompt (the shared first turn) is what TRL's DPO extracts itself.
    extracted = trl_data.maybe_extract_prompt(train[0])
    assert extracted["prompt"] == [{"role": "user", "content": "Q"}]
    assert extracted["chosen"] == [{"role": "assistant", "content": "good"}]


def test_importing_runner_data_loads_no_training_stack() -> None:
    code = (
        "import sys, runner.data\n"
        "heavy = [m for m in ('datasets', 'transformers', 'torch', 'pyarrow') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_rows_become_arrow_batch_by_batch(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import runner.data.load as load

    monkeypatch.setattr(load, "ARROW_BATCH_ROWS", 2)
    rows = [{"messages": chat(f"q{i}", f"a{i}")} for i in range(5)]
    train, _ = load_training_data(DatasetSpec(path=str(write_jsonl(tmp_path / "c.jsonl", rows))))
    assert train["messages"] == [r["messages"] for r in rows]


def test_wrapped_json_list_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    items = [{"text": "first"}, {"text": 7}]
    path.write_text(
        '{\n  "version": 1,\n  "data": [\n'
        + ",\n".join(json.dumps(i) for i in items)
        + "\n  ]\n}\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        load_training_data(DatasetSpec(path=str(path)))
    assert "wrapped.json:5: text is a number (7); expected a string" in info.value.lines


def test_eval_path_in_another_format_is_refused(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "completion": "c"}])
    other = write_jsonl(tmp_path / "eval.jsonl", [{"text": "t"}])
    with pytest.raises(DataError) as info:
        load_training_data(DatasetSpec(path=str(train), eval_path=str(other)))
    assert "missing key 'prompt'" in "\n".join(info.value.lines)


def test_csv_json_cells(tmp_path: Path) -> None:
    path = tmp_path / "chat.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "completion"])
        writer.writerow(["[INST] Say hi [/INST]", "hi"])
    train, _ = load_training_data(DatasetSpec(path=str(path)))
    assert train[0] == {"prompt": "[INST] Say hi [/INST]", "completion": "hi"}
    conv = tmp_path / "conv.csv"
    with conv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(chat("Q", "A"))])
        writer.writerow(["[not json"])
    with pytest.raises(DataError) as info:
        load_training_data(DatasetSpec(path=str(conv)))
    assert "conv.csv:3: messages: the JSON in this cell is not valid" in "\n".join(info.value.lines)


def test_format_variants(tmp_path: Path) -> None:
    rows = [
        {"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    ]
    train, _ = load_training_data(DatasetSpec(path=str(write_jsonl(tmp_path / "s.jsonl", rows))))
    assert train[0]["messages"] == chat("Q", "A")
    rows = [{"system": "S", "instruction": "I", "input": None, "output": "O"}]
    train, _ = load_training_data(DatasetSpec(path=str(write_jsonl(tmp_path / "a.jsonl", rows))))
    assert train[0]["messages"] == chat("I", "O", system="S")
    # OpenAI-style content parts are joined into one string.
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
                },
                {"role": "assistant", "content": "Hi"},
            ]
        }
    ]
    train, _ = load_training_data(DatasetSpec(path=str(write_jsonl(tmp_path / "o.jsonl", rows))))
    assert train[0]["messages"] == chat("Hello", "Hi")
    # Preference pairs without a prompt train SFT on the chosen conversation.
    rows = [{"chosen": chat("Q", "good"), "rejected": chat("Q", "bad")}]
    train, _ = load_training_data(DatasetSpec(path=str(write_jsonl(tmp_path / "p.jsonl", rows))))
    assert train[0] == {"messages": chat("Q", "good")}
