"""The check of large JSON Lines data, split by byte ranges over worker processes.

Each worker reads whole lines from its range, validates and accumulates them exactly as the
single-process pass would, and sends back its problems and fixed-size per-row facts; the parent
merges them in file order. Workers are spawned (not forked: the check may run inside the app,
whose threads a fork would copy mid-flight) with one PYTHONHASHSEED, so their row hashes agree.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runner.data.accumulate import Accumulator
from runner.data.errors import ProblemLog
from runner.data.readers import SNIFF_BYTES, file_kind, read_jsonl
from runner.data.scan import LocalSource, RowScanner

# Below this much data, starting workers (about 0.3 s each) costs more than it saves.
MIN_PARALLEL_BYTES = 64 * 2**20
MIN_CHUNK_BYTES = 16 * 2**20
MAX_WORKERS = 8
# On a 2-vCPU VM two workers ran no faster than one process (the vCPUs share a core and other
# work), so split only where there are cores to spare; use about half of them.
MIN_CORES = 4
COUNT_BLOCK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Chunk:
    file_index: int
    path: Path
    start: int
    end: int
    first_line: int


@dataclass(frozen=True)
class Task:
    source: LocalSource
    chunk: Chunk
    fmt: str
    trainer: str
    convert_as: str
    shape: tuple[tuple[str, bool], ...]
    shape_at: str


@dataclass
class ChunkResult:
    accumulator: Accumulator
    problems: ProblemLog
    rows: int
    bad_rows: int
    peak_rss_bytes: int


def worker_count(files: list[Path]) -> int:
    """Workers worth starting for these files: 0 when the check should stay in this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    total = 0
    for path in files:
        with path.open("rb") as fh:
            if file_kind(path, fh.read(SNIFF_BYTES)) != "jsonl":
                return 0
        total += path.stat().st_size
    if total < MIN_PARALLEL_BYTES or not cores or cores < MIN_CORES:
        return 0
    return min(max(2, cores // 2), MAX_WORKERS, max(2, total // MIN_CHUNK_BYTES))


def _next_line_start(fh: BinaryIO, offset: int) -> int:
    fh.seek(offset)
    fh.readline()
    return fh.tell()


def plan_chunks(files: list[Path], workers: int) -> list[Chunk]:
    """Byte ranges starting at line starts, about `total / workers` each, with their first line
    numbers (counted here, in one sequential read)."""
    sizes = [p.stat().st_size for p in files]
    target = max(MIN_CHUNK_BYTES, sum(sizes) // workers)
    chunks = []
    for index, (path, size) in enumerate(zip(files, sizes, strict=True)):
        with path.open("rb") as fh:
            starts = [0]
            while starts[-1] + target < size:
                nxt = _next_line_start(fh, starts[-1] + target)
                if nxt >= size:
                    break
                starts.append(nxt)
            fh.seek(0)
            line = 1
            position = 0
            bounds = [*starts[1:], size]
            for start, end in zip(starts, bounds, strict=True):
                while position < start:
                    block = fh.read(min(COUNT_BLOCK_BYTES, start - position))
                    line += block.count(b"\n")
                    position += len(block)
                chunks.append(Chunk(index, path, start, end, line))
    return chunks


def _run(task: Task) -> ChunkResult:
    chunk = task.chunk
    scanner = RowScanner(task.fmt, task.trainer, ProblemLog(keep=20), announce=False)
    scanner.convert_as = task.convert_as
    scanner.shape, scanner.shape_at = task.shape, task.shape_at
    accumulator = Accumulator()
    items = read_jsonl(chunk.path, chunk.start, chunk.end, chunk.first_line)
    for _, number, example, raw in scanner.scan_items(task.source, chunk.path, items):
        accumulator.add((chunk.file_index, number), example, raw)
    peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ChunkResult(
        accumulator, scanner.problems, scanner.rows, scanner.bad_rows, peak_rss_bytes
    )


def check_in_parallel(
    source: LocalSource, files: list[Path], probe: RowScanner, workers: int
) -> list[ChunkResult]:
    """Run the chunks of `files` on `workers` processes; `probe` has already settled the format
    and the row shape from the first usable row."""
    assert probe.format is not None and probe.shape is not None
    tasks = [
        Task(
            source,
            chunk,
            probe.format,
            probe.trainer,
            probe.convert_as,
            probe.shape,
            probe.shape_at,
        )
        for chunk in plan_chunks(files, workers)
    ]
    context = multiprocessing.get_context("spawn")
    saved = os.environ.get("PYTHONHASHSEED")
    # One hash function for every worker; the value is arbitrary but must be shared.
    os.environ["PYTHONHASHSEED"] = "20261123"
    try:
        with context.Pool(min(workers, len(tasks))) as pool:
            return pool.map(_run, tasks, chunksize=1)
    finally:
        if saved is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = saved
