"""How big a training file is, for a plan: its usable rows and the mean tokens per row.

One function sizes data for every front end (`tunedeck plan --dataset`, the app's planner),
so a file plans the same everywhere. Rows are read and converted as training reads them; a
row's text is what TRL trains on (the prompt, turns prefixed by their role, and the answer),
the same characters `tunedeck data check` counts. No tokenizer is loaded (a plan answers in a
fraction of a second): tokens are characters / 4, the rate of English text under current BPE
tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.data.errors import DataError, RowProblem
from runner.data.formats import convert_row, detect_format
from runner.data.readers import data_files, read_items, supported, where

CHARS_PER_TOKEN = 4.0


@dataclass(frozen=True)
class DataSize:
    rows: int
    """Rows training can use."""
    tokens_per_row: int
    """Mean tokens of a row's text (characters / CHARS_PER_TOKEN), at least 1."""
    skipped: int
    """Rows that cannot be used (`tunedeck data check` says why)."""

    def note(self) -> str:
        text = f"{self.rows:,} rows x ~{self.tokens_per_row:,} tokens (characters / 4)"
        if self.skipped:
            text += f", {self.skipped:,} unusable rows left out"
        return text


def size_dataset(path: str, trainer: str = "sft") -> DataSize:
    """Rows and mean tokens per row of a file or folder of JSONL, JSON, CSV or Parquet.
    Raises DataError naming the path (and the first bad row) when nothing is usable."""
    root = Path(path).expanduser()
    if root.is_dir():
        files = data_files(root)
        if not files:
            raise DataError([f"{path}: no .jsonl, .json, .csv or .parquet files in the folder"])
    elif root.is_file():
        files = [root]
    else:
        raise DataError(
            [f"{path}: no such file or folder (give a .jsonl, .json, .csv or .parquet)"]
        )
    rows = 0
    chars = 0
    skipped = 0
    first_problem: str | None = None
    for file in files:
        fmt: str | None = None
        for number, row, problem, _raw in read_items(file):
            if problem is None and isinstance(row, dict):
                fmt = fmt or detect_format(row)
                try:
                    if fmt is None:
                        raise RowProblem("unknown format", "the row matches no training format")
                    example = convert_row(row, fmt, trainer)
                except RowProblem as exc:
                    problem = exc
                else:
                    rows += 1
                    chars += len(example.prompt) + len(example.answer)
                    continue
            skipped += 1
            if first_problem is None:
                message = problem.message if problem is not None else "not a JSON object"
                first_problem = f"{where(file, number, root)}: {message}"
    if rows == 0:
        detail = first_problem or f"{path}: no rows"
        hint = "" if supported(files[0]) else " (give a .jsonl, .json, .csv or .parquet)"
        raise DataError([f"{path}: no usable rows; {detail}{hint}"])
    return DataSize(rows, max(1, round(chars / rows / CHARS_PER_TOKEN)), skipped)
