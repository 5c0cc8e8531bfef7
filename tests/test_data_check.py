"""Each check of `check_dataset` on small files, and the `tunedeck data check` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner.data import check_dataset
from tui.cli import app


def chat(question: str, answer: str, system: str | None = None) -> dict[str, object]:
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": turns}


def unique_rows(n: int) -> list[dict[str, object]]:
    return [
        chat(f"Question number {i} about topic {i * 7}", f"Answer {i} is long enough.")
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def warning_with(report, text: str) -> str:  # type: ignore[no-untyped-def]
    found = [w for w in report.warnings if text in w]
    assert found, f"no warning with {text!r} in {report.warnings}"
    return found[0]


def test_clean_data_is_ok(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", unique_rows(120))
    report = check_dataset(str(path), eval_fraction=0.1)
    assert report.verdict == "ok", report.warnings
    assert (report.rows, report.format, report.errors, report.warnings) == (120, "messages", [], [])
    assert report.stats["turns"] == {"min": 2, "median": 2, "max": 2}
    assert report.to_json()["verdict"] == "ok"
    assert "ok" in report.summary_lines()[0]


def test_empty_answers(tmp_path: Path) -> None:
    rows = unique_rows(120)
    rows[4] = chat("Q4?", "   ")
    rows[9] = {"instruction": "x", "output": ""}  # wrong format for this file: an error
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    report = check_dataset(str(path), eval_fraction=0.1)
    assert "train.jsonl:5" in warning_with(report, "empty or whitespace-only answer")
    assert report.stats["empty_answers"] == 1
    assert report.errors[0].startswith("train.jsonl:10: missing key 'messages'")
    assert "looks like alpaca" in report.errors[0]


def test_exact_and_normalised_duplicates_and_contradictions(tmp_path: Path) -> None:
    rows = unique_rows(120)
    rows[10] = rows[2]  # exact
    rows[11] = chat("QUESTION number 3   about topic 21", "answer 3 is LONG enough.")  # normalised
    rows[12] = chat(rows[5]["messages"][0]["content"], "A different answer")  # type: ignore[index]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    report = check_dataset(str(path), eval_fraction=0.1)
    assert report.stats["duplicates"] == {"exact": 1, "normalised": 1, "contradictions": 1}
    assert "train.jsonl:11 repeats line 3" in warning_with(report, "exact duplicates")
    assert "train.jsonl:12 repeats line 4" in warning_with(report, "case and spacing")
    assert "train.jsonl:13 contradicts line 6" in warning_with(report, "different answers")


def test_role_order_and_turn_counts(tmp_path: Path) -> None:
    rows = unique_rows(120)
    rows[0] = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    rows[1] = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "system", "content": "late"},
            {"role": "user", "content": "d"},
            {"role": "assistant", "content": "e"},
        ]
    }
    rows[2] = {"messages": [{"role": "user", "content": "only a question"}]}
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    report = check_dataset(str(path), eval_fraction=0.1)
    text = warning_with(report, "role-order problem")
    assert "3 of 120 rows" in text
    assert "train.jsonl:1: two user turns in a row" in text
    assert "train.jsonl:2: system turn at position 2" in text
    assert "train.jsonl:3: no assistant turn" in text
    assert report.stats["turns"] == {"min": 1, "median": 2, "max": 5}


def test_label_balance(tmp_path: Path) -> None:
    rows = [
        chat(f"Review {i}: fine product {i}", "positive" if i % 10 else "negative")
        for i in range(150)
    ]
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    report = check_dataset(str(path), eval_fraction=0.1)
    assert report.stats["labels"] == {"positive": 135, "negative": 15}
    assert "imbalanced" in warning_with(report, "class labels")
    balanced = [chat(f"Review {i}", "positive" if i % 2 else "negative") for i in range(150)]
    report = check_dataset(str(write_jsonl(tmp_path / "b.jsonl", balanced)), eval_fraction=0.1)
    assert report.stats["labels"] == {"negative": 75, "positive": 75}
    assert not [w for w in report.warnings if "class labels" in w]


def test_personal_data(tmp_path: Path) -> None:
    rows = unique_rows(120)
    rows[3] = chat("Mail jane.doe@example.org please", "ok")
    rows[7] = chat("Call me on +1 415 555 0132", "ok")
    rows[8] = chat("My card is 4111 1111 1111 1111", "ok")
    rows[9] = chat("key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx12", "ok")
    rows[10] = chat("In 2019-2021 we sold 1,234,567 units; order 4111 1111 1111 1112", "ok")
    path = write_jsonl(tmp_path / "pii.jsonl", rows)
    report = check_dataset(str(path), eval_fraction=0.1)
    assert report.stats["personal_data"] == {
        "e-mail address": 1,
        "phone number": 1,
        "card-like number": 1,
        "API-key-like string": 1,
    }
    text = warning_with(report, "likely personal data")
    for part in (
        "1 e-mail address (pii.jsonl:4)",
        "1 phone number (pii.jsonl:8)",
        "1 card-like number (pii.jsonl:9)",
        "1 API-key-like string (pii.jsonl:10)",
    ):
        assert part in text


def test_size_and_eval_split_warnings(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "small.jsonl", unique_rows(12))
    report = check_dataset(str(path))
    assert "only 12 rows: SFT usually needs at least 100" in warning_with(report, "only 12 rows")
    assert "hold out 10-20 %" in warning_with(report, "no eval split")
    report = check_dataset(str(path), eval_path=str(path))
    assert not [w for w in report.warnings if "no eval split" in w]
    # Eval rows that are also training rows make eval loss look better than it is.
    assert "12 training rows also appear in the eval data" in warning_with(report, "eval data")

    pairs = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(200)]
    pairs[3]["rejected"] = pairs[3]["chosen"]
    report = check_dataset(str(write_jsonl(tmp_path / "pref.jsonl", pairs)), trainer="dpo")
    assert report.format == "preference"
    assert "only 200 rows: DPO usually needs at least 300" in warning_with(report, "only 200")
    assert "pref.jsonl:4" in warning_with(report, "chosen identical to rejected")


def test_folder_with_eval_file(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", unique_rows(110))
    write_jsonl(folder / "validation.jsonl", [chat("held out", "yes")])
    report = check_dataset(str(folder))
    assert report.verdict == "ok", report.warnings
    assert report.stats["eval_rows"] == 1


def test_dpo_needs_preference_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", unique_rows(5))
    report = check_dataset(str(path), trainer="dpo")
    assert report.verdict == "errors"
    assert "trainer dpo needs preference rows" in report.errors[0]


def test_many_errors_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    bad = json.dumps({"messages": [{"role": "human", "content": "x"}]})
    path.write_text((bad + "\n") * 5000 + "{not json\n" * 300, encoding="utf-8")
    report = check_dataset(str(path))
    assert len(report.errors) <= 22
    assert report.errors[0] == (
        "bad.jsonl:1: messages[0].role is 'human'; expected one of system, user, assistant"
    )
    summary = next(e for e in report.errors if "more not shown" in e)
    assert "5,300 in all: 5,000 unknown role, 300 broken JSON" in summary
    assert report.bad_rows == 5300


def tiny_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [
        f"Question number {i} about topic {i * 7}. Answer {i} is long enough." for i in range(60)
    ]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    wrapped.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
    )
    wrapped.save_pretrained(folder)
    return folder


def test_token_lengths_with_a_local_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    model = tiny_tokenizer(tmp_path / "tok")
    rows = unique_rows(120)
    rows[0] = chat("long " * 400, "answer")
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    report = check_dataset(str(path), model=str(model), max_length=64, eval_fraction=0.1)
    tok = AutoTokenizer.from_pretrained(model)
    expected = sorted(
        len(
            tok(
                tok.apply_chat_template(r["messages"], tokenize=False),  # type: ignore[index]
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in rows
    )
    tokens = report.stats["tokens"]
    assert (tokens["min"], tokens["max"]) == (expected[0], expected[-1])
    assert tokens["median"] == expected[len(expected) // 2]
    over = sum(1 for n in expected if n > 64)
    assert tokens["truncated"] == over >= 1
    assert f"{over} of 120 rows" in warning_with(report, "longer than max_length 64 tokens")

    missing = check_dataset(str(path), model=str(tmp_path / "no-model"), eval_fraction=0.1)
    assert missing.verdict == "ok" and "tokens" not in missing.stats
    assert any("token lengths skipped" in n for n in missing.notes)


runner = CliRunner()


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", unique_rows(120))
    small = write_jsonl(tmp_path / "small.jsonl", unique_rows(3))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "assitant", "content": "x"}]}\n', encoding="utf-8")

    result = runner.invoke(app, ["data", "check", str(small)])
    assert result.exit_code == 0, result.output
    assert "warnings" in result.output and "only 3 rows" in result.output

    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 1
    assert "bad.jsonl:1: messages[0].role is 'assitant'" in result.output

    result = runner.invoke(app, ["data", "check", str(good), "--json"])
    data = json.loads(result.output)
    assert (result.exit_code, data["rows"], data["format"]) == (0, 120, "messages")
    assert data["verdict"] == "warnings" and any("no eval split" in w for w in data["warnings"])

    for args in (
        [str(tmp_path / "missing.jsonl")],
        [str(good), "--trainer", "ppo"],
        [str(good), "--format", "yaml"],
        [str(good), "--max-length", "0"],
    ):
        result = runner.invoke(app, ["data", "check", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


def test_parallel_check_matches_single_process(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import runner.data.parallel as parallel

    rows: list[object] = unique_rows(3000)
    rows[5] = chat("Mail me at someone@example.com", "ok")
    rows[2999] = chat("Call +44 20 7946 0958", "ok")
    for i in range(1000, 3000, 400):
        rows[i] = rows[i - 900]  # duplicates that cross chunk boundaries
    rows[1500] = chat(rows[20]["messages"][0]["content"], "another answer")  # type: ignore[index]
    lines = [json.dumps(r) for r in rows]
    lines[700] = "{broken"
    lines[2500] = json.dumps({"messages": [{"role": "robot", "content": "x"}]})
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Small thresholds so a small file is split over the workers.
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(parallel, "MIN_CORES", 1)
    monkeypatch.setattr(parallel, "MIN_CHUNK_BYTES", path.stat().st_size // 4)
    chunks = parallel.plan_chunks([path], 4)
    assert len(chunks) == 4 and chunks[0].first_line == 1
    with path.open("rb") as fh:
        data = fh.read()
    for chunk in chunks:  # each chunk starts at a line start, numbered correctly
        assert chunk.start == 0 or data[chunk.start - 1 : chunk.start] == b"\n"
        assert data[: chunk.start].count(b"\n") + 1 == chunk.first_line

    single = check_dataset(str(path), parallel=False).to_json()
    split = check_dataset(str(path)).to_json()
    single.pop("elapsed_s")
    split.pop("elapsed_s")
    assert split == single
    assert single["stats"]["duplicates"]["exact"] == 5
    assert single["bad_rows"] == 2 and single["rows"] == 2998


def test_progress_lines(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import runner.data.check as check

    monkeypatch.setattr(check, "PROGRESS_ROWS", 50)
    seen: list[str] = []
    path = write_jsonl(tmp_path / "train.jsonl", unique_rows(120))
    check_dataset(str(path), progress=seen.append)
    assert seen == ["50 rows read (train.jsonl)", "100 rows read (train.jsonl)"]


def test_missing_eval_path_and_distinct_short_answers(tmp_path: Path) -> None:
    rows = [chat(f"Capital number {i}?", f"City{i}") for i in range(30)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    report = check_dataset(str(path), eval_path=str(tmp_path / "nope.jsonl"))
    assert "eval data: " in report.errors[0] and "no such file or folder" in report.errors[0]
    assert "labels" not in report.stats  # 30 different short answers are not class labels


def test_row_counts_read_unambiguously(tmp_path: Path) -> None:
    # 51 rows in the file, 4 of them unusable: no line may read as if the file had 47 rows.
    rows: list[object] = unique_rows(51)
    for i in (3, 10, 20, 30):
        rows[i] = {"instruction": f"x{i}", "output": ""}  # not a chat row: unusable
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    report = check_dataset(str(path), eval_fraction=0.1)
    assert (report.rows, report.bad_rows) == (47, 4)
    wanted = "51 rows: 47 usable, 4 unusable"
    assert report.rows_text() == wanted
    assert wanted in report.summary_lines()[0]

    result = runner.invoke(app, ["data", "check", str(path)], env={"COLUMNS": "120"})
    assert result.exit_code == 1, result.output
    assert wanted in result.output
    assert "(4 unusable)" not in result.output

    from rich.text import Text

    from presets import load_preset
    from runner.launch import Preflight
    from tui.screens.launch import preflight_text

    shown: Text = preflight_text(load_preset("demo"), Preflight(data=report))
    assert wanted in shown.plain

    clean = check_dataset(str(write_jsonl(tmp_path / "clean.jsonl", unique_rows(51))))
    assert clean.rows_text() == "51 rows"
