"""Log reading by byte offsets, and the monitor's metrics model: plain functions, real files."""

from __future__ import annotations

import random
from pathlib import Path

from tui.widgets.log_file import BLOCK_BYTES, LogFile
from tui.widgets.metrics_model import RunMetrics, downsample


def write_lines(path: Path, lines: list[str], tail: str = "") -> None:
    path.write_bytes(("".join(line + "\n" for line in lines) + tail).encode())


def test_forward_backward_and_line_starts_agree_across_blocks(tmp_path: Path) -> None:
    rng = random.Random(7)
    # Lines of very different lengths, some longer than a block, so block edges fall anywhere.
    lines = [f"{i:05d} " + "x" * rng.choice([0, 3, 80, 700, BLOCK_BYTES + 5]) for i in range(400)]
    path = tmp_path / "train.log"
    write_lines(path, lines)
    log = LogFile(path)
    read, end, pending = log.read_forward(0, 10 * 1024 * 1024)
    assert [line.text[:5] for line in read] == [line[:5] for line in lines]
    assert end == log.size() and pending == ""
    for i in (1, 57, 200, 399):
        back = log.read_backward(read[i].offset, 50)
        assert [b.text[:5] for b in back] == [line[:5] for line in lines[max(0, i - 50) : i]]
        assert [b.offset for b in back] == [r.offset for r in read[max(0, i - 50) : i]]
        assert log.line_start(read[i].offset + 3) == read[i].offset
        assert log.line_start(read[i].offset) == read[i].offset


def test_unfinished_last_line_and_progress_bars(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    write_lines(path, ["first", "10%|#  \r50%|#####  \r100%|##########"], tail="step 3 of")
    log = LogFile(path)
    read, end, pending = log.read_forward(0)
    assert [line.text for line in read] == ["first", "100%|##########"]
    assert pending == "step 3 of"
    assert end == log.size() - len("step 3 of")  # the unfinished line is read again next time
    with path.open("ab") as fh:
        fh.write(b"9\n")
    more, _, pending = log.read_forward(end)
    assert [line.text for line in more] == ["step 3 of9"] and pending == ""


def test_tail_start_and_search_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    write_lines(path, [f"line {i}" for i in range(50_000)])
    log = LogFile(path)
    start = log.tail_start(1000)
    read, _, _ = log.read_forward(start)
    assert read[-1].text == "line 49999" and 40 < len(read) < 120
    hit = log.find("LINE 123", before=log.size())
    assert hit is not None and log.read_forward(hit, 100)[0][0].text == "line 12399"
    first = log.find("line 123", after=0)
    assert first is not None and log.read_forward(first, 100)[0][0].text == "line 123"
    assert log.find("not in the log") is None


def test_missing_and_empty_files_read_as_empty(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "nope.log")
    assert log.read_forward(0) == ([], 0, "")
    assert log.read_backward(100, 10) == []
    assert log.tail_start() == 0 and log.find("x") is None
    (tmp_path / "empty.log").write_bytes(b"")
    assert LogFile(tmp_path / "empty.log").read_forward(0) == ([], 0, "")


def test_downsample_keeps_extremes_and_the_newest_point() -> None:
    steps = list(range(100_000))
    values = [1.0] * 100_000
    values[31_337] = 9.0  # a spike must survive
    values[77_777] = -4.0
    xs, ys = downsample(steps, values, 200)
    assert len(xs) <= 401
    assert 9.0 in ys and -4.0 in ys
    assert xs[-1] == 99_999
    assert xs == sorted(xs)


def test_metrics_model_series_peak_and_eval_warning() -> None:
    m = RunMetrics()
    m.add([{"step": s, "loss": 2.0 - s / 100, "peak_gpu_mem_gib": 10 + s / 10} for s in range(30)])
    m.add([{"no_step": 1}, {"step": "x", "loss": 1}, {"step": 5, "loss": float("nan")}])
    assert len(m.train_loss) == 30 and m.peak_gpu_mem_gib == 12.9
    m.add([{"step": 10, "eval_loss": 1.5}, {"step": 20, "eval_loss": 1.4}])
    assert m.eval_rising() is None
    m.add([{"step": 30, "eval_loss": 1.45}])
    assert m.eval_rising() is None  # only one rise
    m.add([{"step": s, "loss": 1.6 - s / 100} for s in range(31, 41)])
    m.add([{"step": 40, "eval_loss": 1.5}])
    assert m.eval_rising() is not None and "1.400 → 1.500" in str(m.eval_rising())
    m.reset()
    assert len(m.train_loss) == 0 and m.peak_gpu_mem_gib is None
