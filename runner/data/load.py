"""Load training (and evaluation) data as `datasets.Dataset`s in the columns TRL expects.

`datasets` is imported only inside the functions: importing `runner.data` stays cheap.
"""

from __future__ import annotations

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
        train_rows, eval_rows, fmt = _local_rows(spec, trainer)
    else:
        train_rows, eval_rows, fmt = _hub_rows(spec, trainer)
    if spec.eval_path and eval_rows is None:
        eval_rows = _eval_path_rows(spec.eval_path, fmt, trainer)

    from datasets import Dataset

    train = Dataset.from_list(train_rows)
    evaluation = Dataset.from_list(eval_rows) if eval_rows else None
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


def _read_all(
    source: LocalSource, files: list[Path], fmt: str, trainer: str, what: str
) -> tuple[list[dict[str, Any]], str]:
    scanner = RowScanner(fmt, trainer)
    rows = [example.row for _, _, example, _ in scanner.scan(source, files)]
    if scanner.problems:
        bad = scanner.bad_rows
        head = f"{what}: {bad:,} of {bad + scanner.rows:,} rows cannot be used" if bad else what
        raise DataError([head, *scanner.problems.lines()])
    if not rows:
        raise DataError([f"{what}: empty dataset, no rows in {source.root}"])
    return rows, scanner.format or fmt


def _local_rows(
    spec: DatasetSpec, trainer: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]:
    try:
        source = local_source(spec.path, split_eval=not spec.eval_path)
    except SourceProblem as exc:
        raise DataError([f"dataset.path: {exc}"]) from None
    train, fmt = _read_all(source, source.train_files, spec.format, trainer, spec.path)
    evaluation = None
    if source.eval_files:
        evaluation, _ = _read_all(
            source, source.eval_files, fmt, trainer, f"{spec.path} (eval files)"
        )
        _same_columns(train, evaluation, spec.path)
    return train, evaluation, fmt


def _eval_path_rows(path: str, fmt: str, trainer: str) -> list[dict[str, Any]]:
    try:
        source = local_source(path, split_eval=False)
    except SourceProblem as exc:
        raise DataError([f"dataset.eval_path: {exc}"]) from None
    rows, _ = _read_all(source, source.train_files, fmt, trainer, path)
    return rows


def _same_columns(train: list[dict[str, Any]], evaluation: list[dict[str, Any]], what: str) -> None:
    from runner.data.formats import row_shape, shape_text

    if row_shape(train[0]) != row_shape(evaluation[0]):
        raise DataError(
            [
                f"{what}: eval rows have {shape_text(row_shape(evaluation[0]))} but training rows "
                f"have {shape_text(row_shape(train[0]))}"
            ]
        )


def _hub_rows(
    spec: DatasetSpec, trainer: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]:
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
        raise DataError(
            [
                f"dataset.path: {name!r} is not a local file or folder, and loading it as a hub "
                f"dataset (split {split!r}) failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                "check the path, or the network and the dataset id (offline, only datasets "
                "already in the Hugging Face cache load)",
            ]
        ) from None


def _convert_hub(
    dataset: Any, fmt: str, trainer: str, label: str
) -> tuple[list[dict[str, Any]], str]:
    problems = ProblemLog()
    scanner = RowScanner(fmt, trainer, problems)
    rows = []
    for number, row in enumerate(dataset, 1):
        example = scanner.convert(row, lambda n=number: f"{label} row {n}")
        if example is not None:
            rows.append(example.row)
    if problems:
        raise DataError([f"{label}: {scanner.bad_rows:,} rows cannot be used", *problems.lines()])
    if not rows:
        raise DataError([f"{label}: empty dataset"])
    return rows, scanner.format or fmt


__all__ = ["DataError", "RowProblem", "load_training_data"]
