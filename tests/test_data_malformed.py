"""Malformed input: every case gives a clear message with file and line, and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from presets.schema import DatasetSpec
from runner.data import DataError, check_dataset, load_training_data
from tui.cli import app

REPO = Path(__file__).resolve().parents[1]
GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
)
runner = CliRunner()


def check_cli(path: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["data", "check", str(path), *args])
    output = result.output
    assert "Traceback" not in output
    # typer's runner stores an uncaught exception here; SystemExit is the normal exit path.
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    return result.exit_code, output


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "broken.jsonl",
            f'{GOOD}\n{{"messages": [}}\n'.encode(),
            "broken.jsonl:2: not valid JSON: unexpected character",
        ),
        ("truncated.jsonl", f"{GOOD}\n{GOOD[:30]}\n".encode(), "truncated.jsonl:2: not valid JSON"),
        (
            "content-type.jsonl",
            b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 42}]}\n',
            "content-type.jsonl:1: messages[1].content is a number (42); expected a string",
        ),
        (
            "messages-type.jsonl",
            b'{"messages": "Hi there"}\n',
            "messages-type.jsonl:1: messages is a string ('Hi there'); expected a list of",
        ),
        (
            "null-content.jsonl",
            b'{"messages": [{"role": "user", "content": null}]}\n',
            "null-content.jsonl:1: messages[0].content is null; expected a string",
        ),
        (
            "no-content.jsonl",
            b'{"messages": [{"role": "user"}]}\n',
            "no-content.jsonl:1: messages[0] has no 'content'",
        ),
        (
            "alpaca-missing.jsonl",
            b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
            "alpaca-missing.jsonl:2: missing key 'output' (alpaca rows have instruction, input "
            "(optional), output)",
        ),
        (
            "no-format.jsonl",
            b'{"question": "a", "answer": "b"}\n',
            "no-format.jsonl:1: row matches no format (keys: question, answer); expected one of",
        ),
        (
            "not-object.jsonl",
            f"{GOOD}\n[1, 2]\n".encode(),
            "not-object.jsonl:2: row is a list of 2; expected a JSON object",
        ),
        (
            "role.jsonl",
            b'{"messages": [{"role": "user", "content": "x"}, {"role": "assitant", "content": "y"}]}\n',
            "role.jsonl:1: messages[1].role is 'assitant'; expected one of system, user, assistant",
        ),
        (
            "sharegpt-role.jsonl",
            b'{"conversations": [{"from": "robot", "value": "x"}]}\n',
            "sharegpt-role.jsonl:1: conversations[0].from is 'robot'; expected one of human, gpt",
        ),
        (
            "utf8.jsonl",
            f"{GOOD}\n".encode() + b'{"text": "caf\xe9"}\n',
            "utf8.jsonl:2: invalid UTF-8 at byte 14 of the line (e9 22 7d 0a); save the file as UTF-8",
        ),
        ("empty.jsonl", b"", "empty dataset: no rows in"),
        ("blank.jsonl", b"\n  \n\r\n", "empty dataset: no rows in"),
        (
            "image.jsonl",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40,
            "image.jsonl: looks like a binary file (it has NUL bytes)",
        ),
        (
            "array.json",
            f'[\n  {GOOD},\n  {{"messages": 5}}\n]\n'.encode(),
            "array.json:3: messages is a number (5); expected a list",
        ),
        (
            "array-broken.json",
            f'[\n  {GOOD},\n  {{"messages": [}}\n]\n'.encode(),
            "array-broken.json:3: not valid JSON: Expecting value at column 17",
        ),
        (
            "fields.csv",
            b"instruction,input,output\na,b,c\nd,e\n",
            "fields.csv:3: has 2 fields; the header has 3",
        ),
        ("notes.txt", b"just some notes\n", "unsupported file type '.txt'"),
    ],
)
def test_malformed_file_messages(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, output = check_cli(path)
    assert code == 1, output
    assert expected in output, output
    # The loader refuses the same data with the same message.
    with pytest.raises(DataError) as info:
        load_training_data(DatasetSpec(path=str(path)))
    assert any(expected in line for line in info.value.lines) or "empty dataset" in expected


def test_byte_order_mark_and_crlf_are_read(tmp_path: Path) -> None:
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + f"{GOOD}\r\n{GOOD.replace('Hi', 'Yo')}\r\n".encode())
    report = check_dataset(str(bom))
    assert (report.rows, report.errors) == (2, [])
    csv_bom = tmp_path / "bom.csv"
    csv_bom.write_bytes(b"\xef\xbb\xbfinstruction,input,output\r\nSay hi,,hi\r\nAdd,1 1,2\r\n")
    train, _ = load_training_data(DatasetSpec(path=str(csv_bom)))
    assert train[1]["messages"][0]["content"] == "Add\n\n1 1"
    assert train[1]["messages"][1]["content"] == "2"
    code, output = check_cli(csv_bom)
    assert code == 0 and "alpaca" in output


def test_ten_megabyte_single_line(tmp_path: Path) -> None:
    big = "word " * 2_000_000
    good = tmp_path / "big.jsonl"
    good.write_text(json.dumps({"text": big}) + "\n", encoding="utf-8")
    assert good.stat().st_size > 10_000_000
    report = check_dataset(str(good))
    assert (report.rows, report.errors) == (1, [])
    broken = tmp_path / "big-broken.jsonl"
    broken.write_text('{"text": "' + big + "\n", encoding="utf-8")
    code, output = check_cli(broken)
    assert code == 1
    assert "big-broken.jsonl:1: not valid JSON" in output
    assert len(output) < 3000  # the message quotes a snippet, not the 10 MB line


def test_real_command_in_a_subprocess(tmp_path: Path) -> None:
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 100)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": \xff\xfe}\n')
    for path, code, expected in (
        (binary, 1, "looks like a binary file"),
        (bad, 1, "bad.jsonl:2: invalid UTF-8"),
        (tmp_path / "missing.jsonl", 2, "no such file or folder"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "tui.cli", "data", "check", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        output = done.stdout + done.stderr
        assert done.returncode == code, output
        assert expected in output and "Traceback" not in output
