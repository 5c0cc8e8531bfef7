"""The demo: a tiny Llama-like model and a small chat set, made locally with no download.

`ensure_demo()` builds, under `<data dir>/demo/`:

- `model/`          a byte-level BPE tokenizer trained on the demo texts and a 2-layer Llama with
                    random weights (hidden size 64), saved with `save_pretrained`;
- `chat.jsonl`      conversations (`messages`) for SFT, `chat_eval.jsonl` held-out ones;
- `prefs.jsonl`     preference pairs (`prompt`, `chosen`, `rejected`) for DPO.

Everything is seeded, so two builds give byte-identical files. The folder is built next to its
final place and renamed into it, so a half-built demo is never used. torch, tokenizers and
transformers are imported only while building.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from presets import locations

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


def build_model(folder: Path, texts: list[str], vocab_size: int = 512) -> None:
    """Train the tokenizer on `texts` and save it with a randomly initialised tiny Llama."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    # Seeded on a private generator state so the weights are the same on every build.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def ensure_demo(rebuild: bool = False) -> Path:
    """Build the demo files unless an up-to-date build is there; returns the demo folder."""
    target = demo_dir()
    stamp = target / STAMP
    if not rebuild and stamp.is_file() and stamp.read_text().strip() == DEMO_VERSION:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".demo-build-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        rows = demo_rows()
        for name, data in rows.items():
            _write_jsonl(staging / f"{name}.jsonl", data)
        build_model(staging / "model", _texts(rows))
        (staging / STAMP).write_text(DEMO_VERSION + "\n")
        if target.exists():
            old = target.parent / f".demo-old-{os.getpid()}"
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
