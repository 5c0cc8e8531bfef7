"""One configuration of `benchmarks/planner_truth.py`: build the model and trainer the way
`tunedeck run` does, run real training steps, and count their memory.

The model is the catalogue architecture at full size, built on the meta device in the dtype
the runner loads it in (`runner.train_build.model_init_kwargs`), quantised to 4-bit for QLoRA
the way transformers' bitsandbytes loader does it (bitsandbytes' 4-bit ops have meta
implementations), then prepared by the runner's own `prepare_quantized`. The trainer is TRL's
`SFTTrainer` or `DPOTrainer`, built as `runner.train_build.build_trainer` builds it (the
runner's `training_arguments` and `lora_config`); the steps are the Trainer's own
`training_step`, gradient clipping, optimizer (`create_optimizer_and_scheduler`) and
`zero_grad`, as its training loop calls them. What a GPU would run differently from the meta
device is stood in for (`planner_truth_count`).

`device="cpu"` runs the same step on real tensors (small models only): that is how the counter
is checked against the CPU's own allocations.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _disable_current_modes

from benchmarks.planner_truth_count import LiveBytes, Tally
from benchmarks.planner_truth_cuda import (
    CPU_POLICY,
    CudaAutocast,
    cuda_kernels,
    meta_support,
    paged_optimizer_states,
    wrap_forward,
)

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


# --------------------------------------------------------------------- configs and presets


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


def _dataset(case: Case, tokenizer: Any) -> Any:
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


# --------------------------------------------------------------------- building


def _quantize_4bit(model: Any, quantization_config: Any, dtype: torch.dtype) -> None:
    """What transformers' bitsandbytes loader does to a model it loads in 4-bit: its
    `nn.Linear` modules (not the LM head) replaced by `Linear4bit`, each weight loaded in the
    load dtype and quantised (`Params4bit._quantize`), and the model marked as quantised."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from transformers.quantizers.auto import AutoHfQuantizer

    if "dynamic" not in bnbf.name2qmap:
        # the blockwise code table is cached on the first device it is made for: keep it on
        # the CPU, from where it copies to any device
        bnbf.name2qmap["dynamic"] = bnbf.create_dynamic_map()
    quantizer = AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)
    quantizer.preprocess_model(model=model, device_map={"": "meta"}, dtype=dtype)
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        loaded = torch.empty(module.out_features, module.in_features, dtype=dtype, device="meta")
        weight = bnb.nn.Params4bit(loaded, requires_grad=False, **module.weight.__dict__)
        module.weight = weight._quantize("meta")
        if module.bias is not None:
            module.bias = torch.nn.Parameter(
                torch.empty(module.out_features, dtype=dtype, device="meta"),
                requires_grad=False,
            )
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer


def build_model(case: Case, preset: Any, device: str, folder: Path) -> Any:
    """The base model as the runner builds it, on `device`: on the meta device from the
    config (4-bit as transformers' loader makes it); on the CPU, a QLoRA base is saved with
    random weights to `folder` and loaded back by `from_pretrained` with the runner's
    arguments, the real loader."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from runner import train_build

    kwargs = train_build.model_init_kwargs(preset, on_gpu=case.gpu)
    quantization = kwargs.pop("quantization_config", None)
    model_type, values = model_config(case)
    config = AutoConfig.for_model(model_type, **values)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=kwargs["dtype"], attn_implementation=kwargs.get("attn_implementation")
        )
    if quantization is None:
        return model
    if device == "meta":
        _quantize_4bit(model, quantization, kwargs["dtype"])
    else:
        with _disable_current_modes():
            model.save_pretrained(folder)
        del model
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=quantization, **kwargs
        )
    return train_build.prepare_quantized(model, preset)


@contextlib.contextmanager
def _trainer_patches(
    case: Case, preset: Any, device: str, autocast: CudaAutocast | None
) -> Iterator[None]:
    """The Trainer places the model on its device (a no-op on a GPU box where it is there
    already, impossible for meta tensors), as accelerate does the DPO reference model, which
    it runs under autocast; full-weight DPO loads that reference model from the model's path,
    here built like the model itself."""
    import accelerate
    import transformers
    import trl.trainer.dpo_trainer as dpo

    prepare = accelerate.Accelerator.prepare_model

    def prepare_model(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        if autocast is not None:
            wrap_forward(model, autocast)
        return model

    move = transformers.Trainer._move_model_to_device
    create = dpo.create_model_from_path
    get_optimizer = transformers.Trainer.get_optimizer_cls_and_kwargs

    def reference(*args: Any, **kwargs: Any) -> Any:
        return build_model(case, preset, device, Path(tempfile.mkdtemp(prefix="reference-")))

    def optimizer_cls_and_kwargs(args: Any, model: Any = None) -> tuple[Any, Any]:
        cls, kwargs = get_optimizer(args, model)
        if cls is torch.optim.AdamW and not kwargs.get("fused"):
            kwargs = {**kwargs, "foreach": True}  # torch's default for CUDA tensors
        return cls, kwargs

    transformers.Trainer.get_optimizer_cls_and_kwargs = staticmethod(optimizer_cls_and_kwargs)
    if device == "meta":
        accelerate.Accelerator.prepare_model = prepare_model
        transformers.Trainer._move_model_to_device = lambda self, model, where: None
    dpo.create_model_from_path = reference
    try:
        yield
    finally:
        accelerate.Accelerator.prepare_model = prepare
        transformers.Trainer._move_model_to_device = move
        transformers.Trainer.get_optimizer_cls_and_kwargs = staticmethod(get_optimizer)
        dpo.create_model_from_path = create


@contextlib.contextmanager
def _fused_adamw_on_meta() -> Iterator[None]:
    """torch's fused AdamW checks the device type by name; its kernel has a meta version."""
    import torch.optim.optimizer as optimizer
    import torch.utils._foreach_utils as foreach

    real = foreach._get_fused_kernels_supported_devices

    def with_meta() -> list[str]:
        return [*real(), "meta"]

    optimizer._get_fused_kernels_supported_devices = with_meta  # type: ignore[attr-defined]
    try:
        yield
    finally:
        optimizer._get_fused_kernels_supported_devices = real  # type: ignore[attr-defined]


def build_trainer(case: Case, model: Any, preset: Any, tokenizer: Any, run_dir: Path) -> Any:
    """TRL's trainer for the run, as `runner.train_build.build_trainer` makes it."""
    from trl import DPOTrainer, SFTTrainer

    from runner import train_build

    args = train_build.training_arguments(preset, run_dir, 1)
    common: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": _dataset(case, tokenizer),
        "processing_class": tokenizer,
        "peft_config": train_build.lora_config(preset),
    }
    if case.trainer == "dpo":
        return DPOTrainer(ref_model=None, **common)
    return SFTTrainer(**common)


# --------------------------------------------------------------------- the step


@dataclass
class Measured:
    case: Case
    tally: Tally
    seconds: float
    params: int
    trainable_params: int
    host_addresses: set[int] = field(default_factory=set)
    """Addresses of the host-side batches (CPU runs: not the device's memory)."""
    counter: LiveBytes | None = None
    """The counter, for looking into what was live at the peak (`live_at(peak_seq)`)."""


def _backbone(trainer: Any) -> Any:
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def measure(
    case: Case,
    device: str = "meta",
    tokenizer: Any = None,
    steps: int = 2,
    probe: Callable[[LiveBytes], None] | None = None,
    cpu_autocast: bool = False,
) -> Measured:
    """Build the run of `case` and count `steps` optimizer steps (the peak of a step with the
    optimizer states already there is the one a run keeps hitting). `probe`, when given, is
    called with the counter before and after every module's forward and at each phase of a
    step (how the counter is compared with the CPU allocator's own figures). `cpu_autocast`
    (CPU semantics only) trains under bf16 autocast: torch's own on CPU tensors, the
    emulation with torch's CPU lists on meta tensors (how the emulation is checked)."""
    import time

    import trl.kernels.chunked_logprob as chunked

    from runner.demo import ensure_demo

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(ensure_demo() / "model")
    started = time.monotonic()
    host: set[int] = set()
    autocast = None
    if case.gpu:
        autocast = CudaAutocast(torch.bfloat16)
    elif cpu_autocast and device == "meta":
        autocast = CudaAutocast(torch.bfloat16, CPU_POLICY)
    with tempfile.TemporaryDirectory(prefix="planner-truth-") as tmp:
        run_dir = Path(tmp)
        preset = preset_for(case, plan_model(case, run_dir / "model"), str(run_dir / "d.jsonl"))
        counter = LiveBytes(devices=(device,))
        kernels = cuda_kernels(autocast) if case.gpu else contextlib.nullcontext()
        with (
            warnings.catch_warnings(),
            counter,
            meta_support(autocast),
            autocast if autocast is not None else contextlib.nullcontext(),
            kernels,
            _trainer_patches(case, preset, device, autocast),
            _checkpointing(counter, autocast),
            paged_optimizer_states(lambda t: counter.mark(t, "paged optimizer states")),
            _fused_adamw_on_meta(),
        ):
            warnings.simplefilter("ignore")
            model = build_model(case, preset, device, run_dir / "weights")
            trainer = build_trainer(case, model, preset, tokenizer, run_dir)
            tally, params, trainable = (
                _run_steps(case, trainer, counter, autocast, chunked, device, steps, probe, host)
                if not (cpu_autocast and device == "cpu")
                else _with_cpu_autocast(
                    lambda: _run_steps(
                        case, trainer, counter, None, chunked, device, steps, probe, host
                    ),
                    trainer,
                )
            )
    return Measured(case, tally, time.monotonic() - started, params, trainable, host, counter)


def _run_steps(
    case: Case,
    trainer: Any,
    counter: LiveBytes,
    autocast: CudaAutocast | None,
    chunked: Any,
    device: str,
    steps: int,
    probe: Callable[[LiveBytes], None] | None,
    host: set[int],
) -> tuple[Tally, int, int]:
    args = trainer.args
    model = trainer.model
    # What `Trainer.train` does before its loop.
    if args.activation_checkpointing:
        gc_kwargs = dict(args.activation_checkpointing_kwargs or {})
        gc_kwargs.pop("every_n_layers", None)
        gc_kwargs.pop("offload", None)
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=gc_kwargs or None, every_n_layers=1, offload=False
        )
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    model.zero_grad()
    if autocast is not None:
        wrap_forward(model, autocast)
    _hook_regions(trainer, counter, autocast, chunked)
    check = (lambda: probe(counter)) if probe is not None else (lambda: None)
    if probe is not None:
        for module in model.modules():
            module.register_forward_pre_hook(lambda *a: check())
            module.register_forward_hook(lambda *a: check())

    params = {id(p): p for p in model.parameters()}
    reference = getattr(trainer, "ref_model", None)
    ref_ids = {id(p) for p in reference.parameters()} if reference is not None else set()
    counter.mark_live("weights")
    if reference is not None:
        counter.mark(list(reference.parameters()), "reference model")
    trainable = [p for p in params.values() if p.requires_grad]
    counter.mark(trainable, "adapters" if case.method != "full" else "weights")
    del ref_ids
    counter.start()

    # The batches are host memory, made before the step as the data loader makes them; each
    # step copies its batch to the device, as `_prepare_inputs` does.
    with _disable_current_modes():
        batches = [
            trainer.data_collator(
                [
                    trainer.train_dataset[(i * case.micro_batch + j) % len(trainer.train_dataset)]
                    for j in range(case.micro_batch)
                ]
            )
            for i in range(case.grad_accum)
        ]
        items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
        labels_valid = _valid_labels(case, batches[0])
    host.update(
        t.untyped_storage().data_ptr()
        for batch in batches
        for t in batch.values()
        if isinstance(t, torch.Tensor)
    )
    if isinstance(items, torch.Tensor):
        host.add(items.untyped_storage().data_ptr())
        items = items.to(device, copy=True)
    counter.set_true_count(lambda mask: labels_valid if mask.dim() == 2 else mask.numel())
    trainer.current_gradient_accumulation_steps = case.grad_accum
    trainer._prepare_inputs = lambda inputs: inputs
    for _ in range(steps):
        for batch in batches:
            inputs = {
                k: v.to(device, copy=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }
            trainer.training_step(model, inputs, items)
            del inputs
            check()
        with counter.in_region("optimizer"):
            if args.max_grad_norm and args.max_grad_norm > 0:
                trainer.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            check()
            trainer.optimizer.step()
            check()
            trainer.lr_scheduler.step()
            model.zero_grad()
        counter.mark(list(trainer.optimizer.state.values()), "optimizer states")
        check()
    total = sum(p.numel() for p in params.values())
    return counter.tally(), total, sum(p.numel() for p in trainable)


def _with_cpu_autocast(run: Callable[[], Any], trainer: Any) -> Any:
    """Run with the model's forward under torch's own CPU autocast (bf16)."""
    model = trainer.model
    forward = model.forward

    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    model.forward = autocast_forward
    return run()


def _valid_labels(case: Case, batch: dict[str, Any]) -> int:
    """How many next-token labels of a batch count (the rows of the LM head's input)."""
    if case.trainer == "dpo":
        completion = batch["completion_mask"][:, 1:]
        return int(completion.sum())
    labels = batch["labels"][:, 1:]
    return int((labels != -100).sum())


def _hook_regions(
    trainer: Any, counter: LiveBytes, autocast: CudaAutocast | None, chunked: Any
) -> None:
    """Tag what the step makes by where it makes it: the model body's forward, the LM head and
    loss, the backward pass, its recomputation of checkpointed layers."""
    backbone = _backbone(trainer)
    backbone.register_forward_pre_hook(lambda *a: setattr(counter, "region", "forward"))
    backbone.register_forward_hook(lambda *a: setattr(counter, "region", "head"))

    function = chunked.ChunkedLogProbFunction
    backward = function.backward

    def head_backward(ctx: Any, *grads: Any) -> Any:
        with counter.in_region("head"):
            return backward(ctx, *grads)

    function.backward = staticmethod(head_backward)
    counter.on_exit(lambda: setattr(function, "backward", staticmethod(backward)))

    accelerator = trainer.accelerator
    real_backward = accelerator.backward
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def tagged_backward(loss: Any, **kwargs: Any) -> None:
        with counter.in_region("backward"):
            real_backward(loss, **kwargs)
        counter.mark([p.grad for p in params if p.grad is not None], "gradients")
        counter.region = "other"

    accelerator.backward = tagged_backward


@contextlib.contextmanager
def _checkpointing(counter: LiveBytes, autocast: CudaAutocast | None) -> Iterator[None]:
    """transformers' activation checkpointing, with each checkpointed layer recomputed in the
    backward pass under the autocast state of its forward (as torch's checkpoint restores
    autocast) and its tensors tagged as recomputation. transformers binds the function when
    checkpointing is enabled (TRL's DPO re-enables it every step), so it is replaced at the
    source for the whole measurement."""
    import transformers.modeling_utils as modeling_utils

    real = modeling_utils.checkpoint
    modeling_utils.checkpoint = _checkpoint_func(real, counter, autocast)
    try:
        yield
    finally:
        modeling_utils.checkpoint = real


def _checkpoint_func(func: Any, counter: LiveBytes, autocast: CudaAutocast | None) -> Any:
    def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        enabled = bool(autocast and autocast.enabled)

        def body(*a: Any, **k: Any) -> Any:
            region = "recompute" if counter.region == "backward" else counter.region
            with contextlib.ExitStack() as stack:
                stack.enter_context(counter.in_region(region))
                if autocast is not None:
                    # the autograd engine runs the recomputation with no torch-function mode
                    if autocast not in _get_current_function_mode_stack():
                        stack.enter_context(autocast)
                    stack.enter_context(autocast.region(enabled))
                return fn(*a, **k)

        return func(body, *args, **kwargs)

    return run
