"""Stream rows out of JSONL, JSON, CSV and Parquet files, with the line each came from.

Every reader yields `(number, row, problem, raw)`: the line (or Parquet row) number, the parsed
row or None, a `RowProblem` when the row could not be parsed, and the raw bytes of the row when
there are any (JSONL), for checks that scan text. Readers never raise on bad content; a file that
cannot be read at all yields one problem.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from runner.data.errors import RowProblem

Item = tuple[int, Any, RowProblem | None, bytes | None]

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 8192
# Columns of CSV files that may hold JSON-encoded conversations.
JSON_COLUMNS = frozenset(
    {"messages", "conversations", "prompt", "completion", "chosen", "rejected"}
)
CONVERSATION_COLUMNS = frozenset({"messages", "conversations"})
EVAL_NAME = re.compile(r"(^|[-_.])(test|eval|evaluation|valid|validation|val|dev)([-_.]|$)", re.I)


def supported(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def data_files(folder: Path) -> list[Path]:
    """Data files in a folder and its subfolders, sorted, hidden files skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and supported(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def is_eval_file(path: Path) -> bool:
    """Files named like `test.jsonl`, `eval-00.parquet` or `validation.csv` hold eval rows."""
    return bool(EVAL_NAME.search(path.stem))


def file_kind(path: Path, head: bytes) -> str | None:
    """`jsonl`, `json`, `csv`, `tsv`, `parquet`, `binary`, or None when unknown."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if b"\x00" in head:
        return "binary"
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind:
        return kind
    start = head.lstrip(BOM).lstrip()[:1]
    if start == b"{":
        return "jsonl"
    if start == b"[":
        return "json"
    return None


def read_items(path: Path) -> Iterator[Item]:
    """The rows of one file, whatever its kind."""
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        yield 0, None, RowProblem("unreadable", f"cannot read the file: {exc.strerror}"), None
        return
    kind = file_kind(path, head)
    if kind == "binary":
        yield (
            0,
            None,
            RowProblem(
                "binary file",
                "looks like a binary file (it has NUL bytes), not JSONL, JSON, CSV or Parquet",
            ),
            None,
        )
    elif kind is None:
        yield (
            0,
            None,
            RowProblem(
                "unsupported file",
                f"unsupported file type {path.suffix or '(no extension)'!r}; use .jsonl, .json, "
                ".csv or .parquet",
            ),
            None,
        )
    elif kind == "jsonl":
        yield from _jsonl(path)
    elif kind == "json":
        yield from _json(path)
    elif kind in ("csv", "tsv"):
        yield from _csv(path, "\t" if kind == "tsv" else ",")
    else:
        yield from _parquet(path)


def _parse_problem(data: bytes, exc: json.JSONDecodeError, line_offset: int = 0) -> RowProblem:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return _utf8_problem(data, bad)
    if not data.strip(BOM + b" \t\r\n"):
        return RowProblem("broken JSON", "not valid JSON: the line is empty")
    column = f" at column {exc.colno}" if exc.lineno <= 1 and not line_offset else ""
    if line_offset or exc.lineno > 1:
        column = f" at line {exc.lineno + line_offset}, column {exc.colno}"
    near = data[max(0, exc.pos - 20) : exc.pos + 20].decode("utf-8", "replace")
    return RowProblem("broken JSON", f"not valid JSON: {exc.msg}{column} (near {near!r})")


def _utf8_problem(data: bytes, bad: UnicodeDecodeError) -> RowProblem:
    bytes_text = data[bad.start : bad.start + 4].hex(" ")
    return RowProblem(
        "invalid UTF-8",
        f"invalid UTF-8 at byte {bad.start + 1} of the line ({bytes_text}); save the file as UTF-8",
    )


def read_jsonl(
    path: Path, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[Item]:
    """JSON Lines from byte `start` (a line start) to `end` (exclusive, a line start), the first
    being line `first_line`: the parallel check reads one range per worker."""
    return _jsonl(path, start, end, first_line)


def _jsonl(
    path: Path, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[Item]:
    loads = orjson.loads
    with path.open("rb") as fh:
        fh.seek(start)
        number = first_line - 1
        remaining = end - start if end is not None else -1
        for line in fh:
            if end is not None:
                if remaining <= 0:
                    break
                remaining -= len(line)
            number += 1
            if number == 1 and line.startswith(BOM):
                line = line[3:]  # a byte-order mark from Windows editors
            if len(line) < 3 and not line.strip():
                continue
            try:
                row = loads(line)
            except orjson.JSONDecodeError as exc:
                if line.isspace():
                    continue
                yield number, None, _parse_problem(line, exc), line
                continue
            yield number, row, None, line


def _json(path: Path) -> Iterator[Item]:
    data = path.read_bytes()
    if data.startswith(BOM):
        data = data[3:]
    body = data.lstrip()
    if not body:
        return
    if body[:1] == b"{":
        # Many `.json` files are really JSON Lines: one object on each line.
        first_line = body.split(b"\n", 1)
        if len(first_line) == 2 and first_line[1].strip():
            try:
                orjson.loads(first_line[0])
            except orjson.JSONDecodeError:
                pass
            else:
                yield from _jsonl(path)
                return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        start = data.rfind(b"\n", 0, bad.start) + 1
        yield (
            line,
            None,
            _utf8_problem(
                data[start:],
                UnicodeDecodeError(
                    bad.encoding, bad.object, bad.start - start, bad.end - start, bad.reason
                ),
            ),
            None,
        )
        return
    if body[:1] != b"[":
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            yield exc.lineno, None, _parse_problem(data, exc, line_offset=0), None
            return
        key = _rows_key(value)
        if key is None:
            yield 1, value, None, None
            return
        # Read the wrapped list again item by item, for the line each item starts on.
        at = text.find(json.dumps(key))
        bracket = text.find("[", at) if at >= 0 else -1
        if bracket < 0:
            for i, row in enumerate(value[key], 1):
                yield i, row, None, None
            return
        yield from _json_array(text, bracket)
        return
    yield from _json_array(text, text.index("["))


def _rows_key(value: Any) -> str | None:
    """The key of the row list in `{"data": [...]}`-style files: the one value that is a list of
    objects."""
    if not isinstance(value, dict):
        return None
    keys = [k for k, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    return keys[0] if len(keys) == 1 and len(value) <= 3 else None


def _json_array(text: str, bracket: int) -> Iterator[Item]:
    """The items of the list whose `[` is at `bracket`, each with the line it starts on."""
    decoder = json.JSONDecoder()
    pos = bracket + 1
    line = text.count("\n", 0, pos) + 1
    size = len(text)
    ws = re.compile(r"[\s,]*")
    while True:
        match = ws.match(text, pos)
        skipped_end = match.end() if match else pos
        line += text.count("\n", pos, skipped_end)
        pos = skipped_end
        if pos >= size:
            yield (
                line,
                None,
                RowProblem("broken JSON", "not valid JSON: the list is not closed with ]"),
                None,
            )
            return
        if text[pos] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield (
                exc.lineno,
                None,
                RowProblem(
                    "broken JSON",
                    f"not valid JSON: {exc.msg} at column {exc.colno}",
                ),
                None,
            )
            return
        yield line, row, None, None
        line += text.count("\n", pos, end)
        pos = end


def _csv(path: Path, delimiter: str) -> Iterator[Item]:
    bad_lines: dict[int, RowProblem] = {}

    def lines() -> Iterator[str]:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                if number == 1 and raw.startswith(BOM):
                    raw = raw[3:]
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    bad_lines[number] = _utf8_problem(raw, bad)
                    yield raw.decode("utf-8", "replace")

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 1, None, RowProblem("broken CSV", f"not valid CSV: {exc}"), None
        return
    if 1 in bad_lines:
        yield 1, None, bad_lines.pop(1), None
        return
    header = [h.strip() for h in header]
    previous_end = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, RowProblem("broken CSV", f"not valid CSV: {exc}"), None
            return
        start = previous_end + 1
        previous_end = reader.line_num
        problem = next(
            (bad_lines.pop(n) for n in range(start, previous_end + 1) if n in bad_lines), None
        )
        if problem is not None:
            yield start, None, problem, None
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != len(header):
            yield (
                start,
                None,
                RowProblem(
                    "wrong field count",
                    f"has {len(cells)} fields; the header has {len(header)} ({', '.join(header[:6])})",
                ),
                None,
            )
            continue
        row: dict[str, Any] = {}
        for key, cell in zip(header, cells, strict=True):
            if key in JSON_COLUMNS and cell.lstrip().startswith("["):
                try:
                    row[key] = orjson.loads(cell)
                except orjson.JSONDecodeError as exc:
                    if key not in CONVERSATION_COLUMNS:
                        row[key] = cell  # a prompt may well start with "[INST]"
                        continue
                    yield (
                        start,
                        None,
                        RowProblem(
                            "broken JSON", f"{key}: the JSON in this cell is not valid ({exc.msg})"
                        ),
                        None,
                    )
                    break
            else:
                row[key] = cell
        else:
            yield start, row, None, None


def _parquet(path: Path) -> Iterator[Item]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield (
            0,
            None,
            RowProblem(
                "unreadable", "reading Parquet needs pyarrow: pip install 'tunedeck[train]'"
            ),
            None,
        )
        return
    try:
        reader = pq.ParquetFile(path)
        batches = reader.iter_batches(batch_size=2048)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield number, row, None, None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        yield 0, None, RowProblem("unreadable", f"not a readable Parquet file: {exc}"), None


def where(path: Path, number: int, root: Path | None = None) -> str:
    """`train.jsonl:12` for text files, `part-0.parquet: row 12` for Parquet, the file alone for
    problems with the whole file (number 0)."""
    label = str(path.relative_to(root)) if root and path != root else path.name
    if number == 0:
        return label
    if path.suffix.lower() == ".parquet":
        return f"{label}: row {number}"
    return f"{label}:{number}"
