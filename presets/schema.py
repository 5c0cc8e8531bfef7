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

# `\A`/`\Z` and `fullmatch`: `$` also matches before a trailing newline, so "demo\n" passed.
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


class _Strict(BaseModel):
    # NaN and infinity pass every `ge`/`lt` bound or none; no field of a preset means either.
    # Numbers are `strict=True`: values arrive typed from YAML, and lax parsing would read
    # `lora.r: true` as 1 and `price_usd_per_h: yes` as 1.0 without a word.
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
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

    eval_fraction: float | None = Field(default=None, gt=0.0, lt=1.0, strict=True)
    """Hold out this fraction of the training rows for evaluation (e.g. 0.1) when no eval data
    is given. Between 0 and 1, exclusive."""


class LoraSpec(_Strict):
    """The LoRA adapter (PEFT `LoraConfig`); used by the `lora` and `qlora` methods."""

    r: int = Field(default=16, gt=0, strict=True)
    """Rank of the adapter matrices: a positive integer, typically 8 to 64."""

    alpha: int = Field(default=32, gt=0, strict=True)
    """LoRA scaling numerator (`lora_alpha`); the update is scaled by alpha / r."""

    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, strict=True)
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

    num_gpus: int = Field(default=1, ge=1, strict=True)
    """GPUs per machine. 1 runs `python -m runner.train`; more runs torchrun."""

    strategy: Strategy = "single"
    """`single` (one GPU), `ddp` (replicated), `fsdp` (sharded) or `deepspeed-zero3` (sharded)."""

    auto_resume: bool = False
    """Resume automatically from the newest complete checkpoint when the run was interrupted."""

    nnodes: int = Field(default=1, ge=1, strict=True)
    """Number of machines taking part (torchrun `--nnodes`)."""

    mirror: str | None = None
    """Off-box copy of the run, to resume anywhere: a folder (a mounted volume) or an fsspec URL
    (`s3://bucket/runs`, `gs://...`, `hf://...`). Each complete checkpoint and the run's small
    files go to `<mirror>/<run id>/` in the background. Credentials come from the environment
    and the usual credential files (AWS_* variables, ~/.aws), never from here."""

    mirror_wait_s: float = Field(default=120.0, ge=0.0)
    """Seconds the training waits, when it ends (a stop, a spot notice, completion), for the
    mirror to finish uploading the newest checkpoint. Default 120."""

    notify: list[str] = Field(default_factory=list)
    """Apprise URLs told when the run completes, fails or is interrupted (`ntfys://TOPIC`,
    `slack://...`, `discord://...`, `mailtos://...`, `json://HOST/PATH`). Write tokens as
    `${VARIABLE}`: they are read from the environment when sending, so they stay out of the
    run folder."""

    on_finish: str = "none"
    """What to do once the run has completed or failed: `none`, `shutdown` (power the box off,
    so it stops billing) or a shell command (e.g. `runpodctl stop pod $RUNPOD_POD_ID`)."""

    on_finish_grace_s: float = Field(default=120.0, ge=0.0)
    """Seconds between the end of the run and `on_finish`, during which it can be cancelled
    (`c` in the app's monitor, `tunedeck cancel-finish RUN`). Default 120."""

    @field_validator("mirror")
    @classmethod
    def _mirror_without_password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must be a folder or a URL such as s3://bucket/runs, or null")
        if "://" not in value and not value.startswith(("/", "~", "{data_dir}")):
            # The training runs in its run folder: a relative path would land inside it.
            raise ValueError(
                f"{value!r} is a relative path; give an absolute folder (/mnt/volume/runs) "
                "or a URL (s3://bucket/runs)"
            )
        scheme, sep, rest = value.partition("://")
        userinfo = rest.split("/", 1)[0].rpartition("@")[0] if sep else ""
        if ":" in userinfo:
            raise ValueError(
                f"{scheme}://...: a password in the URL would be stored with the run; give "
                "credentials through the environment or the provider's credential file instead"
            )
        return value

    @field_validator("notify")
    @classmethod
    def _notify_urls(cls, value: list[str]) -> list[str]:
        for i, url in enumerate(value):
            if "://" not in url:
                # Not echoed: a mistyped entry may well hold a token.
                raise ValueError(f"item {i + 1} is not a URL (SCHEME://...), e.g. ntfys://TOPIC")
        return value

    @field_validator("on_finish")
    @classmethod
    def _on_finish_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be `none`, `shutdown` or a shell command")
        return value.strip()

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


class EvaluationSpec(_Strict):
    """What happens at the evaluations during training (`training.eval_strategy`), and sample
    answers written while it trains."""

    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop when the eval loss has not improved for this many evaluations in a row; the best
    checkpoint then becomes the run's output. Needs eval data and `training.eval_strategy` steps
    or epoch, with checkpoints at the evaluations. Unset: no early stopping."""

    early_stopping_threshold: float = Field(default=0.0, ge=0.0)
    """How much lower the eval loss must be to count as an improvement, in loss units."""

    samples_every_steps: int | None = Field(default=None, ge=1)
    """Every this many optimizer steps, the model answers a few held-out prompts (greedy) into
    the run folder's train_samples.jsonl, shown in the monitor. Unset: no samples."""

    sample_prompts: int = Field(default=3, ge=1, le=32)
    """Held-out prompts answered at each sample step (the first rows of the eval data)."""

    sample_max_new_tokens: int = Field(default=48, ge=1)
    """Longest sample answer, in tokens."""


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

    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Early stopping and sample answers during training."""

    gpu: str | None = None
    """GPU this preset is planned for (catalogue name such as `RTX 4090`); the detected GPU
    is used when it is not set."""

    price_usd_per_h: float | None = Field(default=None, ge=0.0, strict=True)
    """What the box costs per hour in USD, for cost estimates; the GPU catalogue's typical
    price is used when not set."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            if value != value.strip():
                raise ValueError(
                    f"must not start or end with a space or a line break, got {value!r}"
                )
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

    @model_validator(mode="after")
    def _early_stopping_needs(self) -> Preset:
        problems = early_stopping_problems(self.evaluation, self.training)
        if problems:
            raise PydanticCustomError(
                "field_problems",
                "{summary}",
                {"summary": "; ".join(f"{k}: {m}" for k, m in problems), "problems": problems},
            )
        return self


# TrainingArguments' defaults, which the checks below must assume when a preset leaves them out.
_DEFAULT_SAVE_STEPS = 500
_DEFAULT_LOGGING_STEPS = 10


def early_stopping_problems(
    evaluation: EvaluationSpec, training: dict[str, Any]
) -> list[tuple[str, str]]:
    """(field, message) for each setting early stopping cannot work with. Early stopping keeps
    the best checkpoint (transformers' `load_best_model_at_end`), so it needs evaluations, and a
    checkpoint at each of them."""
    if evaluation.early_stopping_patience is None:
        return []
    eval_strategy = training.get("eval_strategy", "no")
    if eval_strategy not in ("steps", "epoch"):
        return [
            (
                "training.eval_strategy",
                "evaluation.early_stopping_patience needs evaluations during training: set "
                f"training.eval_strategy to steps (with eval_steps) or epoch, got {eval_strategy!r}",
            )
        ]
    problems = []
    if training.get("load_best_model_at_end") is False:
        problems.append(
            (
                "training.load_best_model_at_end",
                "early stopping keeps the best checkpoint; leave this unset or true",
            )
        )
    save_strategy = training.get("save_strategy", "steps")
    if save_strategy not in (eval_strategy, "best"):
        problems.append(
            (
                "training.save_strategy",
                f"early stopping keeps the best checkpoint, so checkpoints must come with the "
                f"evaluations: set it to {eval_strategy!r} (as training.eval_strategy) or 'best', "
                f"got {save_strategy!r}",
            )
        )
    elif save_strategy == "steps":
        save_steps = training.get("save_steps", _DEFAULT_SAVE_STEPS)
        eval_steps = training.get("eval_steps") or training.get(
            "logging_steps", _DEFAULT_LOGGING_STEPS
        )
        whole = all(isinstance(v, int) or float(v).is_integer() for v in (save_steps, eval_steps))
        if whole and eval_steps >= 1 and save_steps % eval_steps:
            problems.append(
                (
                    "training.save_steps",
                    f"must be a multiple of training.eval_steps ({eval_steps:g}) for early "
                    f"stopping to keep the best checkpoint, got {save_steps:g}",
                )
            )
    return problems
