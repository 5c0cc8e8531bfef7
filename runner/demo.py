"""The demo: a tiny Llama-like model and a small chat set, made locally with no download.

`ensure_demo()` builds, under `<data dir>/demo/`:

- `model/`          a byte-level BPE tokenizer trained on the demo texts and a 2-layer Llama with
                    random weights (hidden size 64), saved with `save_pretrained`;
- `chat.jsonl`      conversations (`messages`) for SFT, `chat_eval.jsonl` held-out ones;
- `prefs.jsonl`     preference pairs (`prompt`, `chosen`, `rejected`) for DPO.

Everything is seeded, so two builds give byte-identical files. The folder is built next to its
final place and renamed into it, so a half-built demo is never used; a lock lets two builders
(the app and a command at once) take turns. torch, tokenizers and transformers are imported only
while building: the app builds through `build_demo_process`, in a process of its own, so it
never loads them.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presets import locations

if TYPE_CHECKING:
    from presets.schema import Preset

Progress = Callable[[str], None]

# Bump when the generated files change, so an old demo folder is rebuilt.
DEMO_VERSION = "2"
STAMP = ".tunedeck-demo"
SEED = 1234
TRAIN_ROWS = 320
EVAL_ROWS = 32
PREF_ROWS = 96

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
_THINGS = ["apple", "river", "stone", "cloud", "lamp", "horse", "garden", "window", "boat"]
_NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen", "twenty",
]  # fmt: skip


def demo_dir() -> Path:
    """Where the demo model and data live."""
    return locations.data_dir() / "demo"


_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]


def _exchange(rng: random.Random) -> tuple[str, str]:
    """One question and its correct answer, from a few simple task families."""
    kind = rng.randrange(5)
    if kind == 4:
        who, n, thing = rng.choice(_NAMES), rng.randrange(1, 10), rng.choice(_THINGS)
        more = rng.randrange(1, 11)
        return (
            f"{who} has {n} {thing}s and finds {more} more. How many now?",
            f"{who} has {_NUMBER_WORDS[n + more]} {thing}s now.",
        )
    if kind == 0:
        a, b = rng.randrange(11), rng.randrange(10)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {_NUMBER_WORDS[a + b]}."
    if kind == 1:
        word = rng.choice(_THINGS)
        return f"Spell {word} backwards.", f"{word} backwards is {word[::-1]}."
    if kind == 2:
        colour, thing = rng.choice(_COLOURS), rng.choice(_THINGS)
        return (
            f"I have a {colour} {thing}. What colour is my {thing}?",
            f"Your {thing} is {colour}.",
        )
    n = rng.randrange(1, 20)
    return f"What number comes after {n}?", f"After {n} comes {_NUMBER_WORDS[n + 1]}."


def _wrong_answer(rng: random.Random, question: str, answer: str) -> str:
    """A plausible but wrong answer for the DPO pairs."""
    words = answer.rstrip(".").split(" ")
    last = words[-1]
    pool = _NUMBER_WORDS if last in _NUMBER_WORDS else _COLOURS + _THINGS
    choices = [w for w in pool if w != last] or ["something"]
    return " ".join([*words[:-1], rng.choice(choices)]) + "."


def demo_rows(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """The demo's datasets as rows: `chat`, `chat_eval` (messages) and `prefs` (preference)."""
    rng = random.Random(seed)
    system = {"role": "system", "content": "You answer in one short sentence."}

    seen: set[str] = set()

    def fresh() -> tuple[str, str]:
        # No row repeats another, in or across the files (eval stays held out).
        while True:
            q, a = _exchange(rng)
            if q not in seen:
                seen.add(q)
                return q, a

    def chat(n: int) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            q, a = fresh()
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if rng.random() < 0.25:
                messages.insert(0, system)
            rows.append({"messages": messages})
        return rows

    prefs = []
    for _ in range(PREF_ROWS):
        q, a = fresh()
        prefs.append(
            {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": _wrong_answer(rng, q, a)}],
            }
        )
    return {"chat": chat(TRAIN_ROWS), "chat_eval": chat(EVAL_ROWS), "prefs": prefs}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _texts(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    out: list[str] = []
    for row in rows["chat"] + rows["chat_eval"]:
        out.extend(m["content"] for m in row["messages"])
    for row in rows["prefs"]:
        out.extend(m["content"] for key in ("prompt", "chosen", "rejected") for m in row[key])
    return out


def _quiet(_: str) -> None:
    return None


def build_model(
    folder: Path, texts: list[str], vocab_size: int = 512, progress: Progress = _quiet
) -> None:
    """Train the tokenizer on `texts` and save it with a randomly initialised tiny Llama."""
    progress("loading torch and transformers")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    progress("training the tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 512

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    progress("making the model")
    # Seeded on a private generator state so the weights are the same on every build.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def demo_ready() -> bool:
    """Whether an up-to-date demo build is in place."""
    stamp = demo_dir() / STAMP
    try:
        return stamp.read_text().strip() == DEMO_VERSION
    except OSError:
        return False


def uses_demo(preset: Preset) -> bool:
    """Whether the preset trains on the demo files (the `demo` preset, or one made from it)."""
    target = demo_dir()
    paths = [preset.model, preset.dataset.path, preset.dataset.eval_path]
    return any(p and Path(locations.expand(p)).is_relative_to(target) for p in paths)


@contextmanager
def _build_lock(parent: Path) -> Iterator[None]:
    with (parent / ".demo-build.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


def ensure_demo(rebuild: bool = False, progress: Progress = _quiet) -> Path:
    """Build the demo files unless an up-to-date build is there; returns the demo folder.
    `progress` hears what is being done, a few words at a time."""
    target = demo_dir()
    if not rebuild and demo_ready():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent):
        if not rebuild and demo_ready():  # built by whoever held the lock before
            return target
        _build(target, progress)
    return target


def _build(target: Path, progress: Progress) -> None:
    staging = target.parent / f".demo-build-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        progress("writing the chat and preference sets")
        rows = demo_rows()
        for name, data in rows.items():
            _write_jsonl(staging / f"{name}.jsonl", data)
        build_model(staging / "model", _texts(rows), progress=progress)
        progress("saving")
        (staging / STAMP).write_text(DEMO_VERSION + "\n")
        if target.exists():
            old = target.parent / f".demo-old-{os.getpid()}"
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- building in a process of its own

PROGRESS_PREFIX = "progress: "
READY_PREFIX = "ready: "
BUILD_TIMEOUT_S = 900.0


class DemoError(Exception):
    """The demo could not be built; `lines` say why, one problem each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def build_demo_process(progress: Progress = _quiet, timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """`ensure_demo()` in a child Python (`python -m runner.demo`), reporting its progress; the
    caller never imports torch. Raises DemoError with the child's own error lines."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.demo"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    except OSError as exc:
        raise DemoError([f"demo: cannot start {sys.executable} ({exc.strerror})"]) from None
    assert proc.stdout is not None and proc.stderr is not None
    # stderr is read whole at the end; the child writes little there (warnings, an error).
    ready: str | None = None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith(PROGRESS_PREFIX):
            progress(line[len(PROGRESS_PREFIX) :])
        elif line.startswith(READY_PREFIX):
            ready = line[len(READY_PREFIX) :]
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise DemoError([f"demo: the build took over {timeout_s:.0f} s and was stopped"]) from None
    errors = proc.stderr.read().strip().splitlines()
    if proc.returncode != 0 or ready is None:
        told = [e.removeprefix("error: ") for e in errors if e.startswith("error: ")]
        tail = told or errors[-3:] or [f"exit code {proc.returncode}"]
        raise DemoError([f"demo: building the model and data failed: {tail[0]}", *tail[1:]])
    return Path(ready)


def main() -> int:
    """`python -m runner.demo`: build the demo, printing progress lines and the folder."""
    try:
        folder = ensure_demo(progress=lambda text: print(PROGRESS_PREFIX + text, flush=True))
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write the demo files:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(READY_PREFIX + str(folder), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
