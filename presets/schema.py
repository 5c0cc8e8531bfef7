"""The one typed schema of a tunedeck run.

A preset is everything needed to launch a fine-tuning run: which model, which data, which trainer
and method, the adapter and quantisation settings, TRL's own training arguments and how to launch.
Every field carries a docstring; the app shows it as help next to the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from presets.trl_fields import training_problems

Trainer = Literal["sft", "dpo"]
Method = Literal["full", "lora", "qlora"]
Strategy = Literal["single", "ddp", "fsdp", "deepspeed-zero3"]
DatasetFormat = Literal[
    "auto", "messages", "sharegpt", "alpaca", "text", "prompt_completion", "preference"
]
ComputeDtype = Literal["bfloat16", "float16", "float32"]
Preemption = Literal["auto", "aws", "gcp", "azure", "off"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class DatasetSpec(_Strict):
    """Where the training data comes from and how to read it."""

    path: str = Field(min_length=1)
    """A JSONL, JSON, CSV or Parquet file, a folder of them, or a Hugging Face hub dataset id."""

    split: str = "train"
    """Split to train on when `path` is a hub dataset id (ignored for local files)."""

    format: DatasetFormat = "auto"
    """Row format: `auto` detects it from the keys of the rows; set it to force one of `messages`,
    `sharegpt`, `alpaca`, `text`, `prompt_completion` or `preference`."""

    eval_path: str | None = None
    """Optional separate evaluation file or folder (same formats as `path`)."""

    eval_split: str | None = None
    """Split to evaluate on when `path` is a hub dataset id, e.g. `test`."""

    eval_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Hold out this fraction of the training rows for evaluation (e.g. 0.1) when no eval data
    is given. Between 0 and 1, exclusive."""


class LoraSpec(_Strict):
    """The LoRA adapter (PEFT `LoraConfig`); used by the `lora` and `qlora` methods."""

    r: int = Field(default=16, gt=0)
    """Rank of the adapter matrices: a positive integer, typically 8 to 64."""

    alpha: int = Field(default=32, gt=0)
    """LoRA scaling numerator (`lora_alpha`); the update is scaled by alpha / r."""

    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter input, in [0, 1)."""

    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Modules that get adapters: `all-linear`, or a list of module names such as
    [q_proj, v_proj]."""

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or any(not m.strip() for m in value)):
            raise ValueError("must be `all-linear` or a non-empty list of module names")
        return value


class QuantizationSpec(_Strict):
    """4-bit quantisation of the frozen base (bitsandbytes); used by the `qlora` method."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the base weights: `nf4` (QLoRA's NormalFloat) or `fp4`."""

    double_quant: bool = True
    """Quantise the quantisation constants too (saves about 0.4 bits per parameter)."""

    compute_dtype: ComputeDtype = "bfloat16"
    """Dtype the 4-bit weights are dequantised to for the matmuls; `float16` on GPUs without
    bf16 (T4, V100)."""


class WatchdogSpec(_Strict):
    """Checks the training process makes on itself while it trains (`launch.watchdog`; `false`
    turns them all off). A collapse or a non-finite value checkpoints and stops the run; the
    other findings are warnings in state.json and train.log."""

    enabled: bool = True
    """Run the checks at all (default true)."""

    collapse_steps: int = Field(default=10, ge=2)
    """Stop after this many logged steps in a row whose grad norm is exactly 0, or whose loss
    is unchanged to 1e-6 from the logged step before (default 10)."""

    stall_factor: float = Field(default=20.0, gt=1.0)
    """Warn of a stall when no step has ended for this many times the median step time
    (default 20) ..."""

    stall_min_s: float = Field(default=300.0, gt=0.0)
    """... and for at least this many seconds (default 300: evaluations and saves take longer
    than a step; three times as long before the first steps have set the pace)."""

    gpu_idle_s: float = Field(default=300.0, gt=0.0)
    """Warn when every GPU of the run has been at 0 % utilisation this many seconds (default
    300)."""

    disk_margin: float = Field(default=1.2, ge=1.0)
    """Warn when the runs folder's disk has less free space than this many times the size of
    the last checkpoint (known after the first save; default 1.2)."""

    ram_warn_pct: float = Field(default=95.0, gt=0.0, le=100.0)
    """Warn when this much of the host's RAM is in use, in percent (default 95)."""


class LaunchSpec(_Strict):
    """How the training process is started."""

    num_gpus: int = Field(default=1, ge=1)
    """GPUs per machine. 1 runs `python -m runner.train`; more runs torchrun."""

    strategy: Strategy = "single"
    """`single` (one GPU), `ddp` (replicated), `fsdp` (sharded) or `deepspeed-zero3` (sharded)."""

    auto_resume: bool = False
    """Resume automatically from the newest complete checkpoint when the run was interrupted."""

    nnodes: int = Field(default=1, ge=1)
    """Number of machines taking part (torchrun `--nnodes`)."""

    preemption: Preemption = "auto"
    """Watch the cloud's spot/preemption notice and checkpoint on it: `auto` (default: the
    cloud this machine's DMI data names, none elsewhere), `aws`, `gcp`, `azure` or `off`."""

    preemption_poll_s: float = Field(default=5.0, gt=0.0, le=60.0)
    """Seconds between two looks at the notice (default 5, as AWS advises)."""

    watchdog: WatchdogSpec = Field(default_factory=WatchdogSpec)
    """Loss collapse, non-finite values, stalls, disk and RAM checks during training (on by
    default; `false` turns it off)."""

    @field_validator("preemption", mode="before")
    @classmethod
    def _preemption_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @field_validator("watchdog", mode="before")
    @classmethod
    def _watchdog_switch(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _strategy_matches_gpus(self) -> LaunchSpec:
        if self.strategy == "single" and (self.num_gpus > 1 or self.nnodes > 1):
            raise ValueError(
                "strategy `single` runs on one GPU; choose ddp, fsdp or deepspeed-zero3 "
                f"for num_gpus={self.num_gpus}, nnodes={self.nnodes}"
            )
        return self


class Preset(_Strict):
    """A complete, launchable fine-tuning run."""

    name: str
    """Short identifier: letters, digits, `.`, `_`, `-`; used in run names."""

    description: str = ""
    """One line on what this preset is for."""

    model: str = Field(min_length=1)
    """Base model: a Hugging Face hub id (`meta-llama/Llama-3.1-8B`) or a local folder."""

    dataset: DatasetSpec
    """Training (and optional evaluation) data."""

    trainer: Trainer = "sft"
    """`sft` (supervised fine-tuning, TRL `SFTTrainer`) or `dpo` (preference tuning,
    TRL `DPOTrainer`)."""

    method: Method = "lora"
    """`full` (every weight trains), `lora` (16-bit base + adapter) or `qlora` (4-bit base +
    adapter)."""

    lora: LoraSpec = Field(default_factory=LoraSpec)
    """Adapter settings (ignored for `full`)."""

    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    """4-bit settings (used by `qlora` only)."""

    training: dict[str, Any] = Field(default_factory=dict)
    """TRL training arguments with TRL's own names (`SFTConfig` or `DPOConfig`), e.g.
    learning_rate, num_train_epochs, max_steps, per_device_train_batch_size,
    gradient_accumulation_steps, max_length, gradient_checkpointing, bf16, optim."""

    launch: LaunchSpec = Field(default_factory=LaunchSpec)
    """Process launch: GPU count, distributed strategy, auto-resume, preemption notices and the
    watchdog."""

    gpu: str | None = None
    """GPU this preset is planned for (catalogue name such as `RTX 4090`); the detected GPU
    is used when it is not set."""

    price_usd_per_h: float | None = Field(default=None, ge=0.0)
    """What the box costs per hour in USD, for cost estimates; the GPU catalogue's typical
    price is used when not set."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit, got {value!r}"
            )
        return value

    @field_validator("training")
    @classmethod
    def _check_training(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        trainer = info.data.get("trainer", "sft")
        problems = training_problems(trainer, value)
        if problems:
            # One error carrying every problem; the store's formatter gives each its own line.
            raise PydanticCustomError(
                "training_arguments",
                "{summary}",
                {"summary": "; ".join(f"{k}: {m}" for k, m in problems), "problems": problems},
            )
        return value
