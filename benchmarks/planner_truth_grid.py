"""The configurations `benchmarks/planner_truth.py` measures.

Twelve catalogue architectures, each through the same fifteen variations of method (full,
LoRA, QLoRA), trainer (SFT, DPO), sequence length (512 to 32k), micro-batch (1 to 8),
gradient checkpointing, optimizer (torch AdamW foreach and fused, bitsandbytes 8-bit and paged
8-bit), LoRA rank, targets and dropout. Two architectures are held out: their results go to a
file of their own and are not looked at while the planner is shaped, so their error is an
out-of-sample figure.
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks.planner_truth_case import Case

ARCHITECTURES = (
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.1-70B",
    "mistralai/Mistral-7B-v0.3",
    "Qwen/Qwen2.5-7B",
    "google/gemma-2-9b",
    "google/gemma-3-1b-pt",
    "microsoft/phi-2",
    "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen1.5-MoE-A2.7B",
    # held out
    "Qwen/Qwen3-8B",
    "microsoft/Phi-3-mini-4k-instruct",
)
HOLDOUT = ("Qwen/Qwen3-8B", "microsoft/Phi-3-mini-4k-instruct")
# PEFT cannot put dropout on the stacked expert weights `all-linear` reaches in these
# (lora.ParamWrapper requires lora_dropout == 0): their LoRA runs use none.
NO_DROPOUT = ("mistralai/Mixtral-8x7B-v0.1", "Qwen/Qwen1.5-MoE-A2.7B")

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
QV = ("q_proj", "v_proj")


def _variations(model: str) -> list[Case]:
    base = Case(model=model, method="lora")
    attention = ("qkv_proj", "o_proj") if "Phi-3" in model else ATTENTION
    qv = ("qkv_proj",) if "Phi-3" in model else QV
    if "phi-2" in model:
        attention = ("q_proj", "k_proj", "v_proj", "dense")
    cases = [
        base,
        replace(base, seq_len=512, micro_batch=4, grad_ckpt=False),
        replace(base, seq_len=8192, lora_r=64, lora_targets=qv),
        replace(base, seq_len=32768),
        replace(base, seq_len=4096, micro_batch=2, grad_ckpt=False, optimizer="adamw_torch",
                lora_r=32, lora_targets=attention),
        replace(base, micro_batch=8, lora_dropout=0.0),
        replace(base, method="qlora"),
        replace(base, method="qlora", seq_len=4096, micro_batch=2, optimizer="paged_adamw_8bit"),
        replace(base, method="qlora", seq_len=1024, micro_batch=8, grad_ckpt=False, lora_r=8),
        replace(base, method="full"),
        replace(base, method="full", seq_len=1024, micro_batch=2, grad_ckpt=False,
                optimizer="adamw_8bit"),
        replace(base, method="full", seq_len=4096, optimizer="adamw_torch"),
        replace(base, trainer="dpo", seq_len=1024, micro_batch=2),
        replace(base, trainer="dpo", method="qlora"),
        replace(base, trainer="dpo", method="full", seq_len=1024),
    ]  # fmt: skip
    if model in NO_DROPOUT:
        cases = [replace(c, lora_dropout=0.0) for c in cases]
    return cases


QUICK = ("meta-llama/Llama-3.2-1B", "google/gemma-3-1b-pt")


def grid(name: str = "full") -> list[Case]:
    models = QUICK if name == "quick" else ARCHITECTURES
    cases = [c for model in models for c in _variations(model)]
    if name == "quick":
        cases = cases[::3]
    return cases


TINY_LLAMA = (
    ("hidden_size", 64),
    ("intermediate_size", 128),
    ("num_hidden_layers", 2),
    ("num_attention_heads", 4),
    ("num_key_value_heads", 2),
    ("head_dim", 16),
    ("vocab_size", 512),
    ("tie_word_embeddings", False),
)


def counter_checks() -> list[tuple[Case, bool]]:
    """Cases for the counter against the CPU allocator: (case, train under bf16 autocast).
    The demo's size, and a real-width model at reduced depth (Qwen2.5-0.5B, two layers)."""
    demo = Case(
        model="meta-llama/Llama-3.2-1B",
        method="lora",
        seq_len=64,
        micro_batch=2,
        overrides=TINY_LLAMA,
        gpu=False,
        optimizer="adamw_torch_fused",
    )
    wide = Case(
        model="Qwen/Qwen2.5-0.5B",
        method="lora",
        seq_len=64,
        micro_batch=2,
        layers=2,
        gpu=False,
    )
    return [
        (demo, False),
        (replace(demo, grad_ckpt=False), False),
        (replace(demo, method="full"), False),
        (replace(demo, method="full", trainer="dpo"), False),
        (replace(demo, method="qlora"), False),
        (replace(demo, optimizer="adamw_8bit"), False),
        (demo, True),
        (replace(demo, grad_ckpt=False, method="full"), True),
        (wide, False),
        (replace(wide, method="full"), False),
        (replace(wide, method="qlora"), False),
    ]
