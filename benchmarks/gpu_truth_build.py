"""Model folders and datasets for `benchmarks/gpu_truth.py`, made locally with no download.

Run in its own process (`python benchmarks/gpu_truth_build.py SPEC.json`), so the benchmark
itself never holds a CUDA context that would count in the device's memory. SPEC lists:

- `models`: `{"id", "folder", "tiny"}`: a real architecture from the planner's catalogue
  (config.json numbers), random weights, saved with the demo's byte-level tokenizer; `tiny`
  shrinks it (2 layers, hidden 128, vocabulary 4096) for CPU runs. Memory does not depend on
  the weights' values, so a random model measures what the real one would.
- `datasets`: `{"path", "trainer", "tokens", "rows"}`: JSON Lines whose every row is longer than
  `tokens` tokens, so TRL's `max_length` truncation makes every sequence exactly that long
  (`text` rows for SFT; `prompt`/`chosen`/`rejected` strings for DPO, with a short prompt).

Prints one JSON line per item made.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Shrunk architecture for CPU runs: the catalogue model's family, small enough to train in
# seconds on two cores.
TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 4096,
}
WORDS = [
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white", "apple", "river",
    "stone", "cloud", "lamp", "horse", "garden", "window", "boat", "one", "two", "three", "four",
    "five", "six", "seven", "eight", "nine", "ten", "plus", "after", "comes", "what", "is", "has",
    "finds", "more", "how", "many", "now", "your", "my", "the", "a", "colour", "spell",
    "backwards", "number",
]  # fmt: skip
PROMPT_WORDS = 12


def demo_tokenizer_dir() -> Path:
    from runner.demo import ensure_demo

    return ensure_demo() / "model"


def build_model(model_id: str, folder: Path, tiny: bool, tokenizer_dir: Path) -> dict[str, Any]:
    """A catalogue architecture with random weights, saved in bf16 (fp32 when tiny, as CPU
    runs train in fp32) next to the demo tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from planner.arch import _catalogue_key, catalogue

    key = _catalogue_key(model_id)
    if key is None:
        raise SystemExit(f"{model_id}: not in the planner's catalogue")
    values = dict(catalogue()[key]["config"])
    model_type = values.pop("model_type")
    if tiny:
        values.update(TINY)
        values["max_position_embeddings"] = 4096
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    values.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = AutoConfig.for_model(model_type, **values)
    dtype = torch.float32 if tiny else torch.bfloat16
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    started = time.monotonic()
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        # On the GPU: initialising billions of weights there takes a second, on the CPU minutes.
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(staging)
    tokenizer.model_max_length = 1 << 20  # the data rows are long on purpose
    tokenizer.save_pretrained(staging)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return {
        "model": model_id,
        "folder": str(folder),
        "params": params,
        "tiny": tiny,
        "build_s": round(time.monotonic() - started, 1),
    }


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def build_dataset(
    path: Path, trainer: str, tokens: int, rows: int, tokenizer_dir: Path
) -> dict[str, Any]:
    """`rows` rows each longer than `tokens` tokens (checked with the tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(f"{trainer}-{tokens}")
    # Every word is at least one token; a margin keeps each row past the limit after the
    # chat-free tokenisation TRL does (plus EOS).
    count = tokens + 32
    out = []
    for _ in range(rows):
        if trainer == "dpo":
            row = {
                "prompt": _words(rng, PROMPT_WORDS),
                "chosen": _words(rng, count),
                "rejected": _words(rng, count),
            }
            texts = [row["prompt"] + " " + row["chosen"], row["prompt"] + " " + row["rejected"]]
        else:
            row = {"text": _words(rng, count)}
            texts = [row["text"]]
        for text in texts:
            if len(tokenizer(text)["input_ids"]) <= tokens:
                raise SystemExit(f"generated row is not longer than {tokens} tokens")
        out.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in out:
            fh.write(json.dumps(row) + "\n")
    return {"dataset": str(path), "trainer": trainer, "tokens": tokens, "rows": rows}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    tokenizer_dir = demo_tokenizer_dir()
    for item in spec.get("datasets", []):
        result = build_dataset(
            Path(item["path"]), item["trainer"], item["tokens"], item["rows"], tokenizer_dir
        )
        print(json.dumps(result), flush=True)
    for item in spec.get("models", []):
        result = build_model(item["id"], Path(item["folder"]), item["tiny"], tokenizer_dir)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
