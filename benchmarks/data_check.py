"""Benchmark `tunedeck data check` on a large JSONL: time and peak memory.

Makes (or reuses) a chat JSONL of `--rows` rows of about 1 KB each (a million rows is about 1 GB),
then checks it in a child process and prints the wall time and the child's peak RSS. Run by hand:

    .venv/bin/python benchmarks/data_check.py --rows 1000000
    .venv/bin/python benchmarks/data_check.py --rows 100000 --tiny-tokenizer
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil

WORK = Path(__file__).resolve().parent / "_work"
WORDS = [
    "the",
    "a",
    "model",
    "data",
    "train",
    "answer",
    "question",
    "learning",
    "rate",
    "token",
    "batch",
    "gradient",
    "memory",
    "GPU",
    "adapter",
    "rank",
    "loss",
    "epoch",
    "step",
    "warmup",
    "schedule",
    "checkpoint",
    "resume",
    "signal",
    "python",
    "file",
    "line",
    "format",
    "chat",
    "system",
    "user",
    "assistant",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "preference",
    "value",
]


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    """Rows of 2 to 6 turns; about 1 % exact duplicates and a few e-mail addresses, so every
    check has work to do."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    words = WORDS
    with path.open("wb") as fh:
        previous = b""
        for i in range(rows):
            if previous and rng.random() < 0.01:
                fh.write(previous)
                continue
            turns = [{"role": "system", "content": "You are a concise assistant."}]
            for _ in range(rng.choice((1, 1, 2))):
                question = " ".join(rng.choices(words, k=rng.randint(15, 40)))
                answer = " ".join(rng.choices(words, k=rng.randint(50, 90)))
                if i % 997 == 0:
                    answer += f" mail me at user{i}@example.com"
                turns.append({"role": "user", "content": f"{question} #{i}?"})
                turns.append({"role": "assistant", "content": f"{answer} ({i})."})
            previous = orjson.dumps({"messages": turns}) + b"\n"
            fh.write(previous)


def make_tokenizer(folder: Path, sample: Path, vocab_size: int = 8000) -> str:
    """A byte-level BPE trained on the first rows of the file, with a chat template: a stand-in
    for a real model's fast tokenizer (no download here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if (folder / "tokenizer.json").exists():
        return str(folder)
    with sample.open("rb") as fh:
        texts = [fh.readline().decode() for _ in range(5000)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    wrapped.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    )
    wrapped.save_pretrained(folder)
    return str(folder)


def _tree_rss_bytes(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        # A worker may exit between listing and reading.
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def run_check(path: Path, model: str | None, parallel: bool) -> tuple[float, float, str]:
    """Check in a fresh process; return wall seconds, the peak of the summed RSS of that process
    and its workers (sampled every 50 ms) in MiB, and the summary lines."""
    code = (
        "import sys\n"
        "from runner.data import check_dataset\n"
        "r = check_dataset(sys.argv[1], model=sys.argv[2] or None, parallel=sys.argv[3] == '1')\n"
        "from runner.data.parallel import worker_count\n"
        "from pathlib import Path\n"
        "used = worker_count([Path(sys.argv[1])]) if sys.argv[3] == '1' and not sys.argv[2] else 0\n"
        "print(f'worker processes: {used or \"none (one process)\"}')\n"
        "print(r.summary_lines()[0]); print('\\n'.join(r.summary_lines()[1:4]))\n"
    )
    started = time.perf_counter()
    process = psutil.Popen(
        [sys.executable, "-c", code, str(path), model or "", "1" if parallel else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak_bytes = 0
    while process.poll() is None:
        peak_bytes = max(peak_bytes, _tree_rss_bytes(process))
        time.sleep(0.05)
    wall_s = time.perf_counter() - started
    out = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"check failed with exit code {process.returncode}")
    return wall_s, peak_bytes / 2**20, out.strip()


BASELINE_CODE = """
import sys, time, json
import orjson
loads = orjson.loads if sys.argv[2] == "orjson" else json.loads
started = time.perf_counter()
rows = 0
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        loads(line)
        rows += 1
print(f"{time.perf_counter() - started:.2f}")
"""


def run_baseline(path: Path, parser: str) -> float:
    """Seconds for a bare read-and-parse pass over the file: the floor any check sits on."""
    done = subprocess.run(
        [sys.executable, "-c", BASELINE_CODE, str(path), parser],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--file", type=Path, default=None, help="reuse or create this file")
    parser.add_argument("--model", default=None, help="local model folder for token lengths")
    parser.add_argument(
        "--tiny-tokenizer",
        action="store_true",
        help="train an 8k-vocab BPE tokenizer on the file and count tokens with it",
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time a bare read + parse pass (orjson and the json module) per repeat",
    )
    parser.add_argument(
        "--single", action="store_true", help="check in one process (no worker processes)"
    )
    args = parser.parse_args()
    path = args.file or WORK / f"chat-{args.rows}.jsonl"
    if not path.exists():
        started = time.perf_counter()
        make_file(path, args.rows)
        print(f"made {path} in {time.perf_counter() - started:.1f} s")
    if args.tiny_tokenizer:
        args.model = make_tokenizer(WORK / "tokenizer-8k", path)
    size_mb = path.stat().st_size / 1e6
    times = []
    peak_mib = 0.0
    for _ in range(args.repeat):
        wall_s, peak, summary = run_check(path, args.model, parallel=not args.single)
        times.append(wall_s)
        peak_mib = max(peak_mib, peak)
        print(summary)
        if args.baseline:
            bare = {name: run_baseline(path, name) for name in ("orjson", "json")}
            print(
                f"bare read+parse: orjson {bare['orjson']:.1f} s, json {bare['json']:.1f} s; "
                f"check / orjson pass = {wall_s / bare['orjson']:.1f}x"
            )
    median_s = statistics.median(times)
    print("times (s):", ", ".join(f"{t:.1f}" for t in times))
    print(
        f"rows {args.rows:,}  file {size_mb:,.0f} MB  check median {median_s:.1f} s over "
        f"{len(times)} run(s) ({size_mb / median_s:.0f} MB/s)  peak RSS {peak_mib:.0f} MiB "
        "(all processes)"
    )


if __name__ == "__main__":
    main()
