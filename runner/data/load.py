"""Load training (and evaluation) data as `datasets.Dataset`s in the columns TRL expects.

`datasets` is imported only inside the functions: importing `runner.data` stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presets.schema import DatasetSpec
from runner.data.errors import DataError, ProblemLog, RowProblem
from runner.data.scan import (
    LocalSource,
    RowScanner,
    SourceProblem,
    local_source,
    looks_like_hub_id,
    prepare_hub_access,
)

if TYPE_CHECKING:
    from datasets import Dataset

# Rows converted to one Arrow table at a time: bounds the Python objects alive while loading.
ARROW_BATCH_ROWS = 10_000


def load_training_data(
    spec: DatasetSpec, trainer: str = "sft", seed: int = 42
) -> tuple[Dataset, Dataset | None]:
    """The training and evaluation datasets of `spec`, converted for `trainer` (`sft` or `dpo`).

    Eval data comes from, in this order: `spec.eval_path`; eval-named files in a data folder
    (`test.jsonl`, `validation.parquet`); `spec.eval_split` of a hub dataset; a seeded random
    hold-out of `spec.eval_fraction` of the training rows. Raises DataError naming every bad row
    (file:line: field: what), or the path that cannot be read.
    """
    if trainer not in ("sft", "dpo"):
        raise DataError([f"trainer must be sft or dpo, got {trainer!r}"])
    if Path(spec.path).exists() or not looks_like_hub_id(spec.path):
        train, evaluation, fmt = _local_data(spec, trainer)
    else:
        train, evaluation, fmt = _hub_data(spec, trainer)
    if spec.eval_path and evaluation is None:
        evaluation = _eval_path_data(spec.eval_path, fmt, trainer)
        _same_columns(train, evaluation, spec.eval_path)
    if evaluation is None and spec.eval_fraction:
        held_out = round(len(train) * spec.eval_fraction)
        if held_out < 1 or held_out >= len(train):
            raise DataError(
                [
                    f"dataset.eval_fraction {spec.eval_fraction} of {len(train)} rows leaves "
                    f"{held_out} eval rows; use more data or a larger fraction, or set eval_path"
                ]
            )
        parts = train.train_test_split(test_size=held_out, seed=seed, shuffle=True)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation


def _to_dataset(rows: Iterator[dict[str, Any]]) -> Dataset | None:
    """Arrow batches as the rows stream in, so a large file never sits in memory as Python
    objects all at once; None when there are no rows."""
    from datasets import Dataset, concatenate_datasets

    parts = []
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= ARROW_BATCH_ROWS:
            parts.append(Dataset.from_list(batch))
            batch = []
    if batch:
        parts.append(Dataset.from_list(batch))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _checked(scanner: RowScanner, dataset: Dataset | None, what: str) -> Dataset:
    if scanner.problems:
        bad = scanner.bad_rows
        head = f"{what}: {bad:,} of {bad + scanner.rows:,} rows cannot be used" if bad else what
        raise DataError([head, *scanner.problems.lines()])
    if dataset is None:
        raise DataError([f"{what}: empty dataset, no rows"])
    return dataset


def _read_files(
    source: LocalSource, files: list[Path], fmt: str, trainer: str, what: str
) -> tuple[Dataset, str]:
    scanner = RowScanner(fmt, trainer)
    dataset = _to_dataset(example.row for _, _, example, _ in scanner.scan(source, files))
    return _checked(scanner, dataset, what), scanner.format or fmt


def _local_data(spec: DatasetSpec, trainer: str) -> tuple[Dataset, Dataset | None, str]:
    try:
        source = local_source(spec.path, split_eval=not spec.eval_path)
    except SourceProblem as exc:
        raise DataError([f"dataset.path: {exc}"]) from None
    train, fmt = _read_files(source, source.train_files, spec.format, trainer, spec.path)
    evaluation = None
    if source.eval_files:
        evaluation, _ = _read_files(
            source, source.eval_files, fmt, trainer, f"{spec.path} (eval files)"
        )
        _same_columns(train, evaluation, spec.path)
    return train, evaluation, fmt


def _eval_path_data(path: str, fmt: str, trainer: str) -> Dataset:
    try:
        source = local_source(path, split_eval=False)
    except SourceProblem as exc:
        raise DataError([f"dataset.eval_path: {exc}"]) from None
    dataset, _ = _read_files(source, source.train_files, fmt, trainer, path)
    return dataset


def _same_columns(train: Dataset, evaluation: Dataset, what: str) -> None:
    if train.features != evaluation.features:
        raise DataError(
            [
                f"{what}: eval rows have columns {_columns(evaluation)} but training rows have "
                f"{_columns(train)}; use the same format for both"
            ]
        )


def _columns(dataset: Dataset) -> str:
    return ", ".join(
        f"{name} ({'conversation' if type(feature).__name__ in ('List', 'Sequence', 'list') else 'string'})"
        for name, feature in dataset.features.items()
    )


def _hub_data(spec: DatasetSpec, trainer: str) -> tuple[Dataset, Dataset | None, str]:
    train_ds = _load_hub(spec.path, spec.split)
    train, fmt = _convert_hub(train_ds, spec.format, trainer, f"{spec.path}[{spec.split}]")
    evaluation = None
    if spec.eval_split and not spec.eval_path:
        eval_ds = _load_hub(spec.path, spec.eval_split)
        evaluation, _ = _convert_hub(eval_ds, fmt, trainer, f"{spec.path}[{spec.eval_split}]")
    return train, evaluation, fmt


def _load_hub(name: str, split: str) -> Any:
    prepare_hub_access()
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many kinds here; each means "cannot load"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            [
                f"dataset.path: {name!r} is not a local file or folder, and loading it as a hub "
                f"dataset (split {split!r}) failed: {reason}",
                "check the path, or the network and the dataset id (offline, only datasets "
                "already in the Hugging Face cache load)",
            ]
        ) from None


def _convert_hub(dataset: Any, fmt: str, trainer: str, label: str) -> tuple[Dataset, str]:
    scanner = RowScanner(fmt, trainer, ProblemLog())

    def rows() -> Iterator[dict[str, Any]]:
        for number, row in enumerate(dataset, 1):
            example = scanner.convert(row, lambda n=number: f"{label} row {n}")
            if example is not None:
                yield example.row

    converted = _to_dataset(rows())
    return _checked(scanner, converted, label), scanner.format or fmt


__all__ = ["DataError", "RowProblem", "load_training_data"]
