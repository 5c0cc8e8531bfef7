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
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _disable_current_modes

from benchmarks.planner_truth_case import Case, dataset, model_config, plan_model, preset_for
from benchmarks.planner_truth_count import LiveBytes, Tally
from benchmarks.planner_truth_cuda import (
    CPU_POLICY,
    CudaAutocast,
    cuda_kernels,
    meta_support,
    paged_optimizer_states,
    wrap_forward,
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
        "train_dataset": dataset(case, tokenizer),
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
