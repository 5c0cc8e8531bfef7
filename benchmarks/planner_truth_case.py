"""One configuration of `benchmarks/planner_truth.py`: what it is, the preset tunedeck would
run it with, its data, and what the planner says of it (the way `tunedeck plan PRESET` plans
that preset)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
MAX_STEPS = 10


@dataclass(frozen=True)
class Case:
    """One training configuration."""

    model: str
    """Catalogue id, or a folder with a config.json."""
    method: str
    trainer: str = "sft"
    seq_len: int = 2048
    micro_batch: int = 1
    grad_ckpt: bool = True
    optimizer: str = "adamw_torch_fused"
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("all-linear",)
    """`all-linear` or module names (q_proj, v_proj...)."""
    lora_dropout: float = 0.05
    grad_accum: int = 1
    layers: int | None = None
    """Build only this many decoder layers (a reduced-depth model)."""
    overrides: tuple[tuple[str, Any], ...] = ()
    """config.json values to change (shrunk models in tests)."""
    gpu: bool = True
    """Train as on a CUDA GPU (bf16 weights and autocast, CUDA's kernels), or as the runner
    does on a CPU (fp32, no autocast), which real CPU tensors can check."""

    @property
    def name(self) -> str:
        targets = "all" if self.lora_targets == ("all-linear",) else "+".join(self.lora_targets)
        parts = [
            self.model.split("/")[-1],
            self.trainer,
            self.method,
            f"s{self.seq_len}",
            f"b{self.micro_batch}",
            "ckpt" if self.grad_ckpt else "nockpt",
            self.optimizer,
        ]
        if self.method != "full":
            parts += [f"r{self.lora_r}", targets, f"d{self.lora_dropout:g}"]
        if self.grad_accum > 1:
            parts.append(f"ga{self.grad_accum}")
        if self.layers is not None:
            parts.append(f"L{self.layers}")
        return "-".join(parts)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        out["overrides"] = dict(self.overrides)
        return out


def model_config(case: Case) -> tuple[str, dict[str, Any]]:
    """The model_type and config.json values of the case's architecture."""
    from planner.arch import _catalogue_key, catalogue

    path = Path(case.model)
    if path.is_dir():
        values = json.loads((path / "config.json").read_text())
    else:
        key = _catalogue_key(case.model)
        if key is None:
            raise SystemExit(f"{case.model}: not in the planner's catalogue")
        values = dict(catalogue()[key]["config"])
    if isinstance(values.get("text_config"), dict) and "hidden_size" not in values:
        values = dict(values["text_config"])
    values = {**values, **dict(case.overrides)}
    if case.layers is not None:
        values["num_hidden_layers"] = case.layers
        for key in ("layer_types", "mlp_only_layers"):
            if isinstance(values.get(key), list):
                values[key] = values[key][: case.layers]
    model_type = values.pop("model_type")
    for key in ("architectures", "auto_map", "torch_dtype", "dtype", "transformers_version"):
        values.pop(key, None)
    return model_type, values


def plan_model(case: Case, folder: Path) -> str:
    """What the planner is given for this case: the catalogue id, or, for a reduced or
    changed model, a folder with the same config.json the run builds."""
    if case.layers is None and not case.overrides and not Path(case.model).is_dir():
        return case.model
    model_type, values = model_config(case)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, **values}))
    return str(folder)


def preset_for(case: Case, model: str, data_path: str) -> Any:
    """The tunedeck preset of this configuration."""
    from presets import validate

    training: dict[str, Any] = {
        "max_steps": MAX_STEPS,
        "max_length": case.seq_len,
        "per_device_train_batch_size": case.micro_batch,
        "gradient_accumulation_steps": case.grad_accum,
        "gradient_checkpointing": case.grad_ckpt,
        "bf16": case.gpu,
        "optim": case.optimizer,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
    }
    targets: Any = "all-linear" if case.lora_targets == ("all-linear",) else list(case.lora_targets)
    return validate(
        {
            "name": "truth",
            "model": model,
            "dataset": {"path": data_path},
            "trainer": case.trainer,
            "method": case.method,
            "lora": {
                "r": case.lora_r,
                "alpha": 2 * case.lora_r,
                "dropout": case.lora_dropout,
                "target_modules": targets,
            },
            "training": training,
        },
        "truth.yaml",
    )


def planned(case: Case, folder: Path) -> dict[str, float]:
    """The planner's estimate for the preset of this case, as `tunedeck plan` makes it for a
    preset: component -> GiB, plus `allocated` (the torch allocated peak) and `torch_peak`."""
    from planner.core import plan
    from planner.from_preset import request_from_preset

    preset = preset_for(case, plan_model(case, folder), "data.jsonl")
    report = plan(request_from_preset(preset))
    option = report.options[0]
    out = dict(option.breakdown)
    out["torch_peak"] = option.torch_peak_gib
    out["allocated"] = option.torch_peak_gib - option.breakdown.get("allocator", 0.0)
    out["device_peak"] = option.device_peak_gib
    return out


# --------------------------------------------------------------------- data


def dataset(case: Case, tokenizer: Any) -> Any:
    """Rows longer than `seq_len` tokens, so truncation makes every sequence exactly that long
    (an unpadded batch): token ids for SFT, prompt / chosen / rejected text for DPO."""
    from datasets import Dataset

    rng = random.Random(case.seq_len)
    rows = max(case.micro_batch * case.grad_accum, 2)
    if case.trainer == "sft":
        vocab = min(len(tokenizer), 500)
        return Dataset.from_list(
            [{"input_ids": [rng.randrange(3, vocab) for _ in range(case.seq_len + 8)]}] * rows
        )
    words = ["red", "blue", "green", "stone", "river", "cloud", "lamp", "horse", "boat"]

    def text(count: int) -> str:
        return " ".join(rng.choice(words) for _ in range(count))

    return Dataset.from_list(
        [
            {
                "prompt": text(8),
                "chosen": text(case.seq_len + 16),
                "rejected": text(case.seq_len + 16),
            }
            for _ in range(rows)
        ]
    )
