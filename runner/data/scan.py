"""Where the rows come from, and one pass over them that validates and converts each row.

Both the loaders and the checks go through `RowScanner`, so `tunedeck data check` reports exactly
the rows the training run would refuse.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from runner.data.errors import ProblemLog, RowProblem
from runner.data.formats import (
    EXPECTED_FORMATS,
    FORMATS,
    Example,
    convert_row,
    describe,
    detect_format,
    row_shape,
    shape_text,
)
from runner.data.readers import (
    Item,
    data_files,
    is_eval_file,
    read_items,
    supported,
    where,
)

# `org/name` or `name` without a file extension: what a hub dataset id looks like.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LocalSource:
    """A local file or folder split into training and evaluation files."""

    root: Path
    train_files: list[Path]
    eval_files: list[Path] = field(default_factory=list)

    def label(self, path: Path, number: int) -> str:
        return where(path, number, self.root if self.root.is_dir() else None)


class SourceProblem(Exception):
    """The path cannot be read at all (no such file, no data files in a folder)."""


def looks_like_hub_id(path: str) -> bool:
    return bool(HUB_ID.fullmatch(path)) and Path(path).suffix.lower() not in (
        ".jsonl",
        ".json",
        ".csv",
        ".tsv",
        ".parquet",
        ".ndjson",
    )


def local_source(path: str, split_eval: bool = True) -> LocalSource:
    """Files behind `path`. In a folder, files named like test/eval/validation become the eval
    files (as hub datasets name their splits) unless every file is named so."""
    root = Path(path)
    if root.is_file():
        return LocalSource(root, [root])
    if root.is_dir():
        files = data_files(root)
        if not files:
            raise SourceProblem(f"{path}: the folder has no .jsonl, .json, .csv or .parquet files")
        if not split_eval:
            return LocalSource(root, files)
        train = [p for p in files if not is_eval_file(p.relative_to(root))]
        evals = [p for p in files if is_eval_file(p.relative_to(root))]
        return LocalSource(root, train, evals) if train else LocalSource(root, files)
    if root.exists():
        raise SourceProblem(f"{path}: not a regular file or folder")
    raise SourceProblem(f"{path}: no such file or folder")


def prepare_hub_access(timeout_s: float = 3.0) -> None:
    """Go offline (cache only) for this process when the hub cannot be reached, so a typo or a
    box without network gets an answer in seconds instead of a minute of download retries.
    Only effective before `datasets`/`huggingface_hub` are imported, which read it at import."""
    if "huggingface_hub" in sys.modules or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


class RowScanner:
    """Validates and converts rows one by one, logging every problem with its location.

    The dataset's format is `fmt`, or with `auto` the format of the first row that has one; every
    later row must be in it and have the same shape (Arrow needs one schema per dataset).
    """

    def __init__(
        self,
        fmt: str = "auto",
        trainer: str = "sft",
        problems: ProblemLog | None = None,
        announce: bool = True,
    ):
        if fmt != "auto" and fmt not in FORMATS:
            raise ValueError(
                f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}"
            )
        self.format: str | None = None if fmt == "auto" else fmt
        self.forced = fmt != "auto"
        self.trainer = trainer
        self.convert_as = trainer
        self.problems = problems if problems is not None else ProblemLog()
        self.shape: tuple[tuple[str, bool], ...] | None = None
        self.shape_at = ""
        self.rows = 0
        self.bad_rows = 0
        self.files = 0
        self.trainer_problem: str | None = None
        if self.format is not None:
            self._check_trainer(self.format, "the format setting", announce)

    def _check_trainer(self, fmt: str, origin: str, announce: bool = True) -> None:
        if self.trainer == "dpo" and fmt != "preference":
            self.trainer_problem = (
                f"trainer dpo needs preference rows (prompt, chosen, rejected), but {origin} "
                f"is {fmt}"
            )
            if announce:
                self.problems.add("not a preference pair", self.trainer_problem)
            # Validate the rows in their own format anyway, to report their problems too.
            self.convert_as = "sft"

    def _problem(self, at: str, problem: RowProblem) -> None:
        self.bad_rows += 1
        self.problems.add(problem.kind, f"{at}: {problem.message}")

    def scan(
        self, source: LocalSource, files: list[Path]
    ) -> Iterator[tuple[Path, int, Example, bytes | None]]:
        """Yield `(file, line, example, raw)` for each usable row; log the others."""
        for path in files:
            self.files += 1
            yield from self.scan_items(source, path)

    def scan_items(
        self, source: LocalSource, path: Path, items: Iterator[Item] | None = None
    ) -> Iterator[tuple[Path, int, Example, bytes | None]]:
        """Like `scan` for one file, or for `items` read from it (a range of its lines)."""
        for number, row, problem, raw in items if items is not None else read_items(path):
            if problem is not None:
                self._problem(source.label(path, number), problem)
                continue
            example = self.convert(row, lambda: source.label(path, number))  # noqa: B023
            if example is not None:
                yield path, number, example, raw

    def convert(self, row: object, at: object) -> Example | None:
        """Convert one parsed row; `at` is its location or a function giving it (made only when
        a problem needs it)."""
        fmt = self.format
        if fmt is None:
            fmt = detect_format(row) if isinstance(row, dict) else None
            if fmt is None:
                message = (
                    f"row is {describe(row)}; expected a JSON object"
                    if not isinstance(row, dict)
                    else f"row matches no format (keys: {', '.join(map(str, list(row)[:8])) or 'none'}); "
                    + EXPECTED_FORMATS
                )
                self._problem(_at(at), RowProblem("no format", message))
                return None
            self.format = fmt
            self._check_trainer(fmt, f"the data (from {_at(at)})")
        try:
            example = convert_row(row, fmt, self.convert_as)
        except RowProblem as problem:
            self._problem(_at(at), problem)
            return None
        shape = row_shape(example.row)
        if self.shape is None:
            self.shape, self.shape_at = shape, _at(at)
        elif shape != self.shape:
            self._problem(
                _at(at),
                RowProblem(
                    "mixed shapes",
                    f"row has {shape_text(shape)} but {self.shape_at} has {shape_text(self.shape)};"
                    " every row must have the same fields and kinds",
                ),
            )
            return None
        self.rows += 1
        return example


def _at(at: object) -> str:
    return at() if callable(at) else str(at)


__all__ = [
    "LocalSource",
    "RowScanner",
    "SourceProblem",
    "local_source",
    "looks_like_hub_id",
    "supported",
]
