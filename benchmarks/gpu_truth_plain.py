"""The plain TRL script that `benchmarks/gpu_truth.py` holds tunedeck's presets against.

`python benchmarks/gpu_truth_plain.py CONFIG.json`: an `SFTTrainer` on a model folder and a
JSON Lines file with TRL's defaults for everything but the run's length and where it writes
(plus `use_cpu` without a GPU, which TRL requires there, and a shorter `max_length` in the
benchmark's smoke run). LoRA (and for QLoRA the 4-bit
loading) is what a user writes by hand: the same adapter as the preset, `quantization_config`
passed to the trainer. Writes to CONFIG's `steps_file` one JSON line with the arguments TRL
resolved, then one line per optimizer step (`step`, `wall_time`), flushed at once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    config: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    steps_file = open(config["steps_file"], "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the run)

    class StepTimes(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            line = {"step": state.global_step, "wall_time": time.time()}
            steps_file.write(json.dumps(line) + "\n")
            steps_file.flush()

    args = SFTConfig(
        output_dir=config["output_dir"],
        max_steps=config["max_steps"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        # Only the benchmark's smoke run (the test's) shortens TRL's default 1024.
        **({"max_length": config["max_length"]} if config.get("max_length") else {}),
    )
    resolved = {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "max_length": args.max_length,
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": args.bf16,
        "optim": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        "learning_rate": args.learning_rate,
    }
    steps_file.write(json.dumps({"resolved": resolved}) + "\n")
    steps_file.flush()
    train = load_dataset("json", data_files=config["dataset"], split="train")
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    lora = config["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    quantization = None
    if config["method"] == "qlora":
        quant = config["quantization"]
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant["quant_type"],
            bnb_4bit_use_double_quant=quant["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, quant["compute_dtype"]),
        )
    trainer = SFTTrainer(
        model=config["model"],
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization,
        callbacks=[StepTimes()],
    )
    trainer.train()
    steps_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
