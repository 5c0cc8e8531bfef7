"""`check_dataset`: read a dataset once, as training would, and say what is wrong before any GPU
time is spent.

Errors are what makes training refuse the data (rows that do not parse or do not fit their
format, an empty dataset). Warnings are what makes training worse (empty answers, duplicates,
contradictions, truncation, role order, imbalance, personal data, too few rows, no eval split).
The pass streams: memory grows by under 50 bytes a row, whatever the rows hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner.data.accumulate import Accumulator, Examples, exact_hash
from runner.data.errors import ProblemLog
from runner.data.formats import FORMATS, Example
from runner.data.parallel import check_in_parallel, worker_count
from runner.data.scan import (
    LocalSource,
    RowScanner,
    SourceProblem,
    local_source,
    looks_like_hub_id,
    prepare_hub_access,
)
from runner.data.stats import Labels, Lengths, Loc, PersonalData, RowHashes
from runner.data.tokens import load_tokenizer

# Rows below which a method rarely learns anything useful; guides agree on "a few hundred".
MIN_ROWS = {"sft": 100, "dpo": 300}
# TRL's default `max_length` of SFTConfig and DPOConfig.
DEFAULT_MAX_LENGTH = 1024
# Rows between two progress reports.
PROGRESS_ROWS = 20_000
# A label is "dominant" when it is this many times as frequent as the rarest one.
IMBALANCE_RATIO = 3.0


@dataclass
class CheckReport:
    """What `check_dataset` found. `errors` stop a run; `warnings` are shown and can be passed."""

    path: str
    trainer: str
    format: str
    rows: int = 0
    bad_rows: int = 0
    files: int = 0
    size_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    usage_error: str | None = None
    """Set when the path could not be opened at all (no such file, unknown format name)."""
    elapsed_s: float = 0.0

    @property
    def verdict(self) -> str:
        if self.errors:
            return "errors"
        return "warnings" if self.warnings else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "verdict": self.verdict,
            "format": self.format,
            "trainer": self.trainer,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "files": self.files,
            "size_bytes": self.size_bytes,
            "errors": self.errors,
            "warnings": self.warnings,
            "notes": self.notes,
            "stats": self.stats,
            "usage_error": self.usage_error,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def rows_text(self) -> str:
        """The rows read, usable and not, in words that cannot be misread."""
        return rows_text(self.rows, self.bad_rows)

    def summary_lines(self) -> list[str]:
        """A few lines for a pre-launch screen: the verdict, the size, the lengths, the problems."""
        lines = [
            f"data {self.path}: {self.verdict} · {self.rows_text()} · "
            f"{self.format}, {self.trainer} · {len(self.errors)} "
            f"{_plural('error', len(self.errors))}, {len(self.warnings)} "
            f"{_plural('warning', len(self.warnings))}"
        ]
        tokens = self.stats.get("tokens")
        if tokens:
            lines.append(
                f"tokens: median {tokens['median']:,}, p95 {tokens['p95']:,}, max {tokens['max']:,};"
                f" {tokens['truncated']:,} rows over max_length {tokens['max_length']:,}"
            )
        lines += [f"error: {e}" for e in self.errors[:5]]
        lines += [f"warning: {w}" for w in self.warnings[:5]]
        return lines


def rows_text(usable_rows: int, unusable_rows: int) -> str:
    """`51 rows: 47 usable, 4 unusable`, or `51 rows` when every row can be used. The total
    comes first: a bare `47 (4 unusable)` reads as if the file had 47 rows."""
    total = usable_rows + unusable_rows
    head = f"{total:,} {_plural('row', total)}"
    if not unusable_rows:
        return head
    return f"{head}: {usable_rows:,} usable, {unusable_rows:,} unusable"


def check_dataset(
    path: str,
    trainer: str = "sft",
    model: str | None = None,
    max_length: int | None = None,
    fmt: str = "auto",
    *,
    eval_path: str | None = None,
    eval_fraction: float | None = None,
    parallel: bool = True,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check the file, folder or hub dataset at `path` for `trainer`. Never raises for bad data:
    every problem is in the report. `model` (a local folder or a cached hub id) enables token
    lengths; `eval_path`/`eval_fraction` (from the preset) say whether eval data is planned.
    Large JSON Lines data is checked on several processes unless `parallel` is False.
    `progress`, when given, receives a short status line now and then (for a spinner)."""
    started = time.monotonic()
    report = CheckReport(path=path, trainer=trainer, format=fmt)
    usage = _usage_problem(trainer, fmt, max_length)
    if usage:
        return _unusable(report, usage, started)
    tokenizer = None
    if model:
        tokenizer, why_not = load_tokenizer(model)
        if why_not:
            report.notes.append(why_not)
    else:
        report.notes.append("token lengths skipped: no model given (--model)")
    scanner = RowScanner(fmt, trainer, ProblemLog(keep=20))
    accumulator = Accumulator(tokenizer)
    has_eval = bool(eval_path or eval_fraction)
    eval_exact: set[int] = set()
    if Path(path).exists() or not looks_like_hub_id(path):
        try:
            source = local_source(path)
        except SourceProblem as exc:
            return _unusable(report, str(exc), started)
        report.size_bytes = sum(p.stat().st_size for p in source.train_files + source.eval_files)
        files = source.train_files

        def label(loc: Loc) -> str:
            return source.label(files[loc[0]], loc[1])

        workers = worker_count(files) if tokenizer is None and parallel else 0
        fallback = _check_local(scanner, accumulator, source, files, workers, progress)
        if fallback:
            report.notes.append(fallback)
        if source.eval_files:
            has_eval = True
            eval_exact = _eval_hashes(
                source, source.eval_files, scanner.format or fmt, trainer, report
            )
    else:
        hub = _hub_rows(path)
        if isinstance(hub, str):
            return _unusable(report, hub, started)

        def label(loc: Loc) -> str:
            return f"{path} row {loc[1]}"

        for loc, example in _hub_items(scanner, hub, path):
            accumulator.add(loc, example, None)
            if progress is not None and loc[1] % PROGRESS_ROWS == 0:
                progress(f"{loc[1]:,} rows read")
    if eval_path:
        try:
            held_out = local_source(eval_path, split_eval=False)
        except SourceProblem as exc:
            report.errors.append(f"eval data: {exc}")
        else:
            eval_exact |= _eval_hashes(
                held_out, held_out.train_files, scanner.format or fmt, trainer, report
            )
    report.rows, report.bad_rows = scanner.rows, scanner.bad_rows
    _report_checks(report, accumulator, label, max_length)
    report.errors = scanner.problems.lines() + report.errors
    report.format = scanner.format or fmt
    report.files = scanner.files
    if scanner.rows == 0 and not scanner.problems:
        report.errors.append(f"empty dataset: no rows in {path}")
    elif scanner.rows == 0:
        report.errors.append("no usable rows: every row has a problem")
    if scanner.rows:
        _dataset_warnings(report, scanner.rows, trainer, has_eval, eval_exact, accumulator.hashes)
    report.elapsed_s = time.monotonic() - started
    return report


def _check_local(
    scanner: RowScanner,
    accumulator: Accumulator,
    source: LocalSource,
    files: list[Path],
    workers: int,
    progress: Callable[[str], None] | None = None,
) -> str | None:
    """Feed every row of `files` to `accumulator`: here, or split over `workers` processes once
    the first usable row has settled the format and shape. Returns a note when worker
    processes could not be started and the rows were read here instead."""
    index = {p: i for i, p in enumerate(files)}
    note = None
    if workers:
        probe = RowScanner(
            "auto" if not scanner.forced else scanner.format or "auto",
            scanner.trainer,
            ProblemLog(keep=0),
        )
        if next(probe.scan(source, files), None) is not None:
            if progress is not None:
                progress(f"reading on {workers} worker processes")
            try:
                results = check_in_parallel(source, files, probe, workers)
            except (OSError, RuntimeError) as exc:
                # e.g. a calling script without a __main__ guard, or no room for processes
                note = f"worker processes unavailable ({exc}); checked in one process"
            else:
                if probe.trainer_problem and not scanner.trainer_problem:
                    scanner.problems.add("not a preference pair", probe.trainer_problem)
                for result in results:
                    accumulator.merge(result.accumulator)
                    scanner.problems.merge(result.problems)
                    scanner.rows += result.rows
                    scanner.bad_rows += result.bad_rows
                scanner.format, scanner.shape = probe.format, probe.shape
                scanner.files = len(files)
                accumulator.peak_rss_bytes = sum(r.peak_rss_bytes for r in results)
                return None
    for path, number, example, raw in scanner.scan(source, files):
        accumulator.add((index[path], number), example, raw)
        if progress is not None and scanner.rows % PROGRESS_ROWS == 0:
            progress(f"{scanner.rows:,} rows read ({path.name})")
    return note


def _usage_problem(trainer: str, fmt: str, max_length: int | None) -> str | None:
    if trainer not in ("sft", "dpo"):
        return f"trainer must be sft or dpo, got {trainer!r}"
    if fmt != "auto" and fmt not in FORMATS:
        return f"format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}"
    if max_length is not None and max_length <= 0:
        return f"max_length must be a positive number of tokens, got {max_length}"
    return None


def _unusable(report: CheckReport, message: str, started: float) -> CheckReport:
    report.usage_error = message
    report.errors.append(message)
    report.elapsed_s = time.monotonic() - started
    return report


def _hub_rows(name: str) -> Any:
    """The training split of a hub dataset, streamed; or a message saying why it cannot be read."""
    prepare_hub_access()
    try:
        import datasets
    except ImportError:
        return f"{name}: no such file or folder (and `datasets` is not installed to read hub ids)"
    try:
        return datasets.load_dataset(name, split="train", streaming=True)
    except Exception as exc:  # datasets raises many kinds here; each means "cannot read"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{name}: no such file or folder, and not readable as a hub dataset ({reason[:200]})"


def _hub_items(scanner: RowScanner, rows: Any, name: str) -> Iterator[tuple[Loc, Example]]:
    scanner.files = 1
    for number, row in enumerate(rows, 1):
        example = scanner.convert(row, lambda n=number: f"{name} row {n}")
        if example is not None:
            yield (0, number), example


def _eval_hashes(
    source: LocalSource, files: list[Path], fmt: str, trainer: str, report: CheckReport
) -> set[int]:
    """Validate the eval files too; keep their row hashes to spot eval rows seen in training."""
    scanner = RowScanner(fmt, trainer, ProblemLog(keep=10))
    hashes = {exact_hash(orjson.dumps(ex.row)) for _, _, ex, _ in scanner.scan(source, files)}
    report.errors += [f"eval data: {line}" for line in scanner.problems.lines()]
    report.stats["eval_rows"] = scanner.rows
    return hashes


def _report_checks(
    report: CheckReport,
    acc: Accumulator,
    label: Callable[[Loc], str],
    max_length: int | None,
) -> None:
    rows = report.rows
    if not rows:
        return
    report.stats["chars"] = acc.chars.summary()
    report.stats["turns"] = acc.turn_summary()
    _warn_examples(
        report, "empty_answers", acc.empty, "have an empty or whitespace-only answer", label
    )
    _warn_examples(
        report, "chosen_is_rejected", acc.same_pair, "have chosen identical to rejected", label
    )
    _warn_examples(report, "role_order", acc.roles, "have a role-order problem", label)
    _duplicates(report, acc.hashes, rows, label)
    _personal_data(report, acc.pii, label)
    _label_balance(report, acc.labels, rows)
    if acc.tokens is not None:
        acc.tokens.flush()
        if acc.tokens.note:
            report.notes.append(acc.tokens.note)
        _token_lengths(report, acc.tokens.lengths, rows, max_length)


def _share(count: int, rows: int) -> str:
    return f"{count:,} of {rows:,} rows ({100 * count / rows:.1f} %)"


def _locations(label: Callable[[Loc], str], first: list[tuple[Loc, str]]) -> str:
    return "; ".join(f"{label(loc)}{': ' + detail if detail else ''}" for loc, detail in first)


def _warn_examples(
    report: CheckReport, key: str, found: Examples, what: str, label: Callable[[Loc], str]
) -> None:
    report.stats[key] = found.count
    rows = report.rows
    if found.count:
        report.warnings.append(
            f"{_share(found.count, rows)} {what}, e.g. {_locations(label, found.first)}"
        )


def _duplicates(
    report: CheckReport, hashes: RowHashes, rows: int, label: Callable[[Loc], str]
) -> None:
    exact, exact_examples = hashes.duplicates(hashes.exact)
    normal, normal_examples = hashes.duplicates(hashes.normal)
    contradictions, contra_examples = hashes.contradictions()
    report.stats["duplicates"] = {
        "exact": exact,
        "normalised": max(0, normal - exact),
        "contradictions": contradictions,
    }

    def pairs(examples: list[tuple[Loc, Loc]], verb: str = "repeats") -> str:
        return "; ".join(f"{label(a)} {verb} {_other(label, a, b)}" for a, b in examples)

    if exact:
        report.warnings.append(
            f"{_share(exact, rows)} are exact duplicates, e.g. {pairs(exact_examples)}"
        )
    if normal > exact:
        report.warnings.append(
            f"{normal - exact:,} more rows are duplicates once case and spacing are ignored, "
            f"e.g. {pairs(normal_examples)}"
        )
    if contradictions:
        report.warnings.append(
            f"{contradictions:,} prompts appear with different answers (contradictions), "
            f"e.g. {pairs(contra_examples, 'contradicts')}"
        )


def _other(label: Callable[[Loc], str], loc: Loc, other: Loc) -> str:
    """`line 12` when the other row is in the same file, else its full location."""
    return f"line {other[1]}" if other[0] == loc[0] and ":" in label(other) else label(other)


def _plural(noun: str, count: int) -> str:
    if count == 1:
        return noun
    return noun + ("es" if noun.endswith("ss") else "s")


def _personal_data(report: CheckReport, pii: PersonalData, label: Callable[[Loc], str]) -> None:
    report.stats["personal_data"] = dict(pii.counts)
    if not pii.counts:
        return
    parts = [
        f"{pii.counts[kind]:,} {_plural(kind, pii.counts[kind])} "
        f"({', '.join(label(loc) for loc in pii.examples[kind])})"
        for kind in pii.KINDS
        if pii.counts[kind]
    ]
    report.warnings.append(
        "likely personal data: " + "; ".join(parts) + "; remove or mask it before training"
    )


def _label_balance(report: CheckReport, labels: Labels, rows: int) -> None:
    balance = labels.balance(rows)
    if balance is None:
        return
    report.stats["labels"] = balance
    counts = list(balance.values())
    ratio = counts[0] / counts[-1]
    if ratio >= IMBALANCE_RATIO:
        shares = ", ".join(f"{k!r} {100 * v / rows:.0f} %" for k, v in list(balance.items())[:6])
        report.warnings.append(
            f"the answers look like {len(balance)} class labels and are imbalanced ({shares}; "
            f"{ratio:.1f}x between the most and least common): the model may learn to always "
            "answer the common one"
        )


def _token_lengths(
    report: CheckReport, lengths: Lengths, rows: int, max_length: int | None
) -> None:
    summary = lengths.summary()
    if summary is None:
        return
    limit = max_length or DEFAULT_MAX_LENGTH
    over = lengths.above(limit)
    report.stats["tokens"] = {
        **summary,
        "max_length": limit,
        "max_length_source": "given" if max_length else "TRL default",
        "truncated": over,
        "truncated_share": round(over / rows, 4),
    }
    if over:
        report.warnings.append(
            f"{_share(over, rows)} are longer than max_length {limit:,} tokens and would be "
            f"truncated (longest {summary['max']:,}, p95 {summary['p95']:,})"
        )


def _dataset_warnings(
    report: CheckReport,
    rows: int,
    trainer: str,
    has_eval: bool,
    eval_exact: set[int],
    hashes: RowHashes,
) -> None:
    if eval_exact:
        leaked = sum(1 for h in hashes.exact if h in eval_exact)
        report.stats["eval_rows_in_train"] = leaked
        if leaked:
            report.warnings.append(
                f"{leaked:,} training rows also appear in the eval data: eval loss will look "
                "better than it is"
            )
    minimum = MIN_ROWS[trainer]
    if rows < minimum:
        report.warnings.append(
            f"only {rows:,} {_plural('row', rows)}: {trainer.upper()} usually needs at least {minimum} clean "
            "examples (a few hundred good ones beat thousands of noisy ones)"
        )
    if not has_eval:
        report.warnings.append(
            "no eval split: hold out 10-20 % (dataset.eval_fraction: 0.1) or set "
            "dataset.eval_path, to see overfitting"
        )
