"""The CUDA stand-ins of `benchmarks/planner_truth.py`: what meta tensors would compute
differently from a CUDA GPU, replaced by what the GPU does, allocation for allocation.

- autocast: CUDA autocast's casting rules (there is no autocast for meta tensors);
- SDPA: CUDA's flash kernel (FlashAttention-2 as bundled with PyTorch), or its memory-efficient
  kernel when there is a mask, instead of the math path;
- dropout: the fused CUDA kernel's 1-byte mask instead of a mask in the input's dtype;
- TRL's fused LM head: its Triton kernels (in place, no temporaries) instead of the torch fold,
  and its fp32-output GEMM.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# ---------------------------------------------------------------------- CUDA autocast


LOWER_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class AutocastPolicy:
    """Which operators autocast runs in the lower precision, which in fp32, and which in fp32
    unless a dtype is given (the lists of torch's autocast_mode.cpp for one device type)."""

    device_type: str
    lower: frozenset[str]
    fp32: frozenset[str]
    fp32_unless_dtype: frozenset[str]


CUDA_POLICY = AutocastPolicy(
    device_type="cuda",
    lower=frozenset({
        "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "addmv",
        "addbmm", "baddbmm", "einsum", "scaled_dot_product_attention", "conv1d", "conv2d",
        "conv3d", "prelu", "chain_matmul", "linalg_multi_dot", "mv", "linalg_vecdot",
    }),
    fp32=frozenset({
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
        "reciprocal", "rsqrt", "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus",
        "layer_norm", "group_norm", "cosine_similarity", "nll_loss", "cross_entropy",
        "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
        "binary_cross_entropy_with_logits", "logsumexp", "cdist", "dist", "renorm",
    }),
    fp32_unless_dtype=frozenset({"softmax", "log_softmax", "sum", "cumsum", "prod", "cumprod"}),
)  # fmt: skip
# The CPU lists, for checking the mechanism against torch's own CPU autocast.
CPU_POLICY = AutocastPolicy(
    device_type="cpu",
    lower=frozenset({
        "conv1d", "conv2d", "conv3d", "bmm", "mm", "linalg_vecdot", "baddbmm", "addmm",
        "addbmm", "linear", "matmul", "__matmul__", "__rmatmul__", "prelu",
        "scaled_dot_product_attention",
    }),
    fp32=frozenset({
        "binary_cross_entropy", "prod", "cdist", "trace", "mse_loss", "nll_loss",
        "cross_entropy", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss",
        "binary_cross_entropy_with_logits", "polar", "quantile", "nanquantile",
    }),
    fp32_unless_dtype=frozenset(),
)  # fmt: skip


class CudaAutocast(TorchFunctionMode):
    """CUDA autocast's casting rules (torch's autocast_mode.cpp lists) for meta tensors, applied
    above autograd as the real autocast is: a cast is an autograd op, so what the next op keeps
    for its backward is the cast copy. Casts of leaf tensors that require grad (parameters) are
    cached until the outermost autocast region ends, as autocast's weight cache does."""

    def __init__(self, dtype: torch.dtype, policy: AutocastPolicy = CUDA_POLICY) -> None:
        super().__init__()
        self.dtype = dtype
        self.policy = policy
        self.enabled = False
        self._cache: dict[int, torch.Tensor] = {}
        self._depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if not self.enabled:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        policy = self.policy
        if name in policy.lower:
            args, kwargs = self._cast_all(args, kwargs, self.dtype)
        elif name in policy.fp32:
            args, kwargs = self._cast_all(args, kwargs, torch.float32)
        elif name in policy.fp32_unless_dtype and kwargs.get("dtype") is None:
            first = args[0] if args else None
            lower = isinstance(first, torch.Tensor) and first.dtype in LOWER_DTYPES
            if lower and not any(isinstance(a, torch.dtype) for a in args):
                kwargs = {**kwargs, "dtype": torch.float32}
        return func(*args, **kwargs)

    def cast(self, t: Any, dtype: torch.dtype) -> Any:
        """Autocast's `cached_cast`: floating tensors other than fp64 become `dtype`; a leaf
        that requires grad, cast to the lower precision, is cast once per region."""
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == dtype:
            return t
        if t.dtype == torch.float64:
            return t
        cacheable = (
            dtype != torch.float32
            and t.dtype == torch.float32
            and t.requires_grad
            and t.is_leaf
            and not t._is_view()
        )
        if cacheable:
            hit = self._cache.get(id(t))
            if hit is not None:
                return hit
        out = t.to(dtype)
        if cacheable:
            self._cache[id(t)] = out
        return out

    def _cast_all(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        def cast(value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return type(value)(cast(v) for v in value)
            return self.cast(value, dtype)

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    @contextlib.contextmanager
    def region(self, enabled: bool) -> Iterator[None]:
        """An autocast region (nested regions restore the outer state, the outermost clears
        the weight cache on exit, as torch.autocast does)."""
        before = self.enabled
        self.enabled = enabled
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            self.enabled = before
            if self._depth == 0:
                self._cache.clear()


# ---------------------------------------------------------------------- flash attention


class _FlashAttention(torch.autograd.Function):
    """What CUDA's `_scaled_dot_product_flash_attention` (FlashAttention-2 inside PyTorch)
    allocates and keeps: the output and an fp32 logsumexp per query row in the forward; q, k,
    v (GQA heads not expanded: the kernel reads them grouped), output and logsumexp kept; in
    the backward dq, dk, dv, an fp32 dq accumulator and softmax row sums (rows rounded up to
    128, head size to 32), and for GQA dk/dv at the full head count before their group sum."""

    @staticmethod
    def forward(ctx, q, k, v):  # type: ignore[no-untyped-def]
        batch, heads, seq, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, seq, dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        q, k, v, out, lse = ctx.saved_tensors
        del out, lse
        batch, heads, seq, head_dim = q.shape
        kv_heads = k.shape[1]
        rows = 128 * math.ceil(seq / 128)
        dims = 32 * math.ceil(head_dim / 32) if head_dim <= 192 else 256
        softmax_d = torch.empty(batch, heads, rows, dtype=torch.float32, device=q.device)
        dq_accum = torch.empty(batch, rows, heads, dims, dtype=torch.float32, device=q.device)
        dq = torch.empty_like(q)
        if kv_heads != heads:
            dk_full = torch.empty(batch, seq, heads, head_dim, dtype=k.dtype, device=k.device)
            dv_full = torch.empty_like(dk_full)
            group = heads // kv_heads
            dk = dk_full.view(batch, seq, kv_heads, group, head_dim).sum(3).transpose(1, 2)
            dv = dv_full.view(batch, seq, kv_heads, group, head_dim).sum(3).transpose(1, 2)
            del dk_full, dv_full
        else:
            dk, dv = torch.empty_like(k), torch.empty_like(v)
        del softmax_d, dq_accum
        return dq, dk, dv


class _EfficientAttention(torch.autograd.Function):
    """What CUDA's `_scaled_dot_product_efficient_attention` (the memory-efficient kernel,
    which SDPA picks when there is a mask) allocates and keeps: the output and an fp32
    logsumexp per query row (rows rounded up to 32); q, k, v, the additive mask, output and
    logsumexp kept; in the backward dq, dk, dv, an fp32 row-sum and an fp32 dq accumulator."""

    @staticmethod
    def forward(ctx, q, k, v, bias):  # type: ignore[no-untyped-def]
        batch, heads, seq, _ = q.shape
        out = torch.empty_like(q)
        rows = 32 * math.ceil(seq / 32)
        lse = torch.empty(batch, heads, rows, dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        q, k, v, bias, out, lse = ctx.saved_tensors
        del bias, out, lse
        batch, heads, seq, head_dim = q.shape
        delta = torch.empty(batch, heads, seq, dtype=torch.float32, device=q.device)
        dq_accum = torch.empty(batch, seq, heads, head_dim, dtype=torch.float32, device=q.device)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del delta, dq_accum
        return dq, dk, dv, None


def _flash_sdpa(
    autocast: CudaAutocast | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` as CUDA runs it: the flash kernel for a causal,
    unmasked bf16/fp16 call; the memory-efficient kernel when there is a mask (a boolean mask
    is first turned into an additive one in the query's dtype, as SDPA does). Under autocast
    the inputs are cast first, as SDPA is on autocast's lower-precision list."""
    if autocast is not None and autocast.enabled:
        query, key, value = (autocast.cast(t, autocast.dtype) for t in (query, key, value))
    same_heads = enable_gqa or key.shape[1] == query.shape[1]
    if dropout_p == 0.0 and same_heads and query.shape[-1] <= 256:
        if attn_mask is None and query.dtype in (torch.bfloat16, torch.float16):
            return _FlashAttention.apply(query, key, value)
        if attn_mask is not None and key.shape[1] == query.shape[1]:
            bias = attn_mask
            if bias.dtype == torch.bool:
                bias = torch.zeros(bias.shape, dtype=query.dtype, device=bias.device)
            return _EfficientAttention.apply(query, key, value, bias)
    return _REAL_SDPA(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )


_REAL_SDPA = F.scaled_dot_product_attention


def cuda_dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    """CUDA's dropout: the fused kernel keeps a 1-byte mask (`native_dropout`)."""
    if not training or p == 0.0:
        return input
    return torch.native_dropout(input, p, True)[0]


_REAL_DROPOUT = F.dropout


# ---------------------------------------------------------------------- TRL's fused LM head


class _NoAlloc:
    """A Triton kernel launch (`kernel[grid](...)`): it writes into the buffers it is given
    and allocates nothing."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _addmm_in_place(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """CUDA's `addmm(out_dtype=float32, out=acc)`: accumulates into `acc`, no fp32 copies."""


# ---------------------------------------------------------------------- installing


class _Patches:
    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        had = hasattr(owner, name)
        self._undo.append((owner, name, getattr(owner, name, None), had))
        setattr(owner, name, value)

    def undo(self) -> None:
        for owner, name, value, had in reversed(self._undo):
            if had:
                setattr(owner, name, value)
            else:
                delattr(owner, name)
        self._undo.clear()


@contextlib.contextmanager
def meta_support(autocast: CudaAutocast | None) -> Iterator[None]:
    """What meta tensors need to run a training step at all: autocast queries answered for the
    meta device (there is none for it; with `autocast` given, they report its state, as CUDA's
    would under mixed precision), and transformers' `maybe_autocast` regions honoured."""
    patches = _Patches()
    real_enabled = torch.is_autocast_enabled
    real_dtype = torch.get_autocast_dtype

    emulated = autocast.policy.device_type if autocast is not None else None

    def is_enabled(device_type: str | None = None) -> bool:
        asked = "cuda" if device_type is None else device_type
        if asked == "meta" or (asked == emulated and autocast is not None):
            return bool(autocast and autocast.enabled)
        return real_enabled(asked)

    def get_dtype(device_type: str) -> torch.dtype:
        if autocast is not None and device_type in ("meta", emulated):
            return autocast.dtype
        if device_type == "meta":
            return torch.bfloat16
        return real_dtype(device_type)

    patches.set(torch, "is_autocast_enabled", is_enabled)
    patches.set(torch, "get_autocast_dtype", get_dtype)
    real_autocast = torch.autocast

    def autocast_region(device_type: str, *args: Any, **kwargs: Any) -> Any:
        # `torch.autocast(device_type=x.device.type, ...)` for a meta tensor (PEFT's expert
        # LoRA turns autocast off around its fold): the emulated region, on or off
        if device_type != "meta":
            return real_autocast(device_type, *args, **kwargs)
        enabled = bool(kwargs.get("enabled", True))
        if autocast is None:
            return contextlib.nullcontext()
        return autocast.region(enabled and autocast.enabled)

    patches.set(torch, "autocast", autocast_region)
    if autocast is not None:
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "") or ""
            if name.startswith("transformers") and hasattr(module, "maybe_autocast"):
                patches.set(module, "maybe_autocast", _maybe_autocast(autocast))
    try:
        yield
    finally:
        patches.undo()


@contextlib.contextmanager
def cuda_kernels(autocast: CudaAutocast | None) -> Iterator[None]:
    """CUDA's kernels where they allocate differently from what runs here: flash attention for
    SDPA, the fused dropout, TRL's Triton LM-head kernels and its fp32-output GEMM."""
    import trl.kernels.chunked_logprob as chunked
    import trl.trainer.utils as trl_utils

    patches = _Patches()

    def triton_device(device: torch.device) -> bool:
        return device.type in ("cuda", "xpu", "meta", "cpu")

    patches.set(chunked, "_use_triton", triton_device)
    patches.set(trl_utils, "_use_triton", triton_device)
    patches.set(chunked, "_forward_kernel", _NoAlloc())
    patches.set(chunked, "_backward_kernel", _NoAlloc())
    patches.set(chunked, "_addmm_fp32", _addmm_in_place)
    if not hasattr(chunked, "triton"):
        patches.set(chunked, "triton", types.SimpleNamespace(cdiv=lambda a, b: -(-a // b)))
    patches.set(F, "scaled_dot_product_attention", functools.partial(_flash_sdpa, autocast))
    patches.set(F, "dropout", cuda_dropout)
    try:
        yield
    finally:
        patches.undo()


@contextlib.contextmanager
def paged_optimizer_states(mark: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """bitsandbytes' paged optimizers keep each state of 100k elements or more in CUDA
    managed memory (`cudaMallocManaged`, outside PyTorch's pool): the state is made as usual
    and `mark` tags it as living outside the pool."""
    from bitsandbytes.optim.optimizer import Optimizer8bit

    real = Optimizer8bit.get_state_buffer

    def get_state_buffer(self: Any, p: torch.Tensor, dtype: torch.dtype = torch.float32) -> Any:
        if p.device.type != "meta" or not self.is_paged or p.numel() < 1e5:
            return real(self, p, dtype=dtype)
        buffer = torch.zeros_like(p, dtype=dtype)
        mark(buffer)
        return buffer

    Optimizer8bit.get_state_buffer = get_state_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        Optimizer8bit.get_state_buffer = real  # type: ignore[method-assign]


def _maybe_autocast(autocast: CudaAutocast) -> Callable[..., Any]:
    """transformers' `maybe_autocast` is a no-op on meta tensors; the stand-in honours its
    `enabled=False` regions (the rotary tables are computed in fp32 there)."""

    def maybe(device_type: str, dtype: Any = None, enabled: bool = True, cache_enabled: Any = None):  # type: ignore[no-untyped-def]
        if device_type == "meta":
            return autocast.region(enabled and autocast.enabled)
        return contextlib.nullcontext()

    return maybe


def wrap_forward(model: torch.nn.Module, autocast: CudaAutocast) -> None:
    """Run `model.forward` under autocast, as accelerate wraps it for mixed precision."""
    forward = model.forward

    @functools.wraps(forward)
    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with autocast.region(True):
            return forward(*args, **kwargs)

    model.forward = autocast_forward  # type: ignore[method-assign]
