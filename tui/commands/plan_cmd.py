"""`tunedeck plan`: which method fits, what it costs and why, from flags or a preset."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tui.commands import common
from tui.commands.common import fail, print_json

if TYPE_CHECKING:
    import typer

    from planner import PlanReport, PlanRequest

# Characters per token of English text under current BPE tokenizers; used only to size a
# dataset file without loading a tokenizer (the plan must answer in a fraction of a second).
CHARS_PER_TOKEN = 4.0
BAR_CELLS = 16
SHORT = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}


def _dataset_size(path: str) -> tuple[int, int]:
    """(rows, mean tokens per row) of a JSONL/JSON file, from the text it holds."""
    file = Path(path).expanduser()
    if not file.is_file():
        fail(f"--dataset {path}: no such file (give a .jsonl or .json file)")
    rows = 0
    chars = 0

    def text_len(value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, list):
            return sum(text_len(v) for v in value)
        if isinstance(value, dict):
            return sum(text_len(v) for k, v in value.items() if k != "role")
        return 0

    try:
        with file.open(encoding="utf-8") as handle:
            if file.suffix == ".json":
                data = json.load(handle)
                items = data if isinstance(data, list) else [data]
                rows, chars = len(items), sum(text_len(i) for i in items)
            else:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        chars += text_len(json.loads(line))
                    except json.JSONDecodeError as exc:
                        fail(f"{path}:{number}: not valid JSON ({exc.msg})")
                    rows += 1
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"--dataset {path}: cannot read ({exc})")
    if rows == 0:
        fail(f"--dataset {path}: no rows")
    return rows, max(1, round(chars / rows / CHARS_PER_TOKEN))


def _download_config(model: str) -> None:
    """Only config.json, into the Hugging Face cache where the planner then finds it."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        fail(f"--download {model}: HF_HUB_OFFLINE is set; unset it or copy the config.json here")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        fail("--download needs huggingface_hub (pip install huggingface_hub)")
    common.err_console.print(f"fetching {model}/config.json ...")
    try:
        hf_hub_download(model, "config.json", etag_timeout=5)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail(f"--download {model}: could not fetch config.json ({first})")


def _list_catalogues(models: bool, gpus: bool, as_json: bool) -> None:
    from planner import gpu_catalogue
    from planner.arch import catalogue, spec_from_config

    data: dict[str, Any] = {}
    if models:
        data["models"] = [
            {
                "model": key,
                "params": spec_from_config(entry["config"], key).total_params,
                "model_type": entry["config"]["model_type"],
                "aliases": entry.get("aliases", []),
            }
            for key, entry in catalogue().items()
        ]
    if gpus:
        data["gpus"] = [g.to_json() for g in gpu_catalogue()]
    if as_json:
        print_json(data)
        return
    for row in data.get("models", []):
        common.console.print(
            f"{row['model']:55s} {row['params'] / 1e9:7.2f} B  {row['model_type']}"
        )
    for g in data.get("gpus", []):
        price = f"${g['price_usd_per_h']:.2f}/h" if g["price_usd_per_h"] is not None else "-"
        common.console.print(
            f"{g['name']:12s} {g['memory_gib']:6.1f} GiB {g['tflops']:6.0f} TFLOPS "
            f"{g['bandwidth_gbps']:6.0f} GB/s  bf16 {'yes' if g['bf16'] else 'no '}  {price}"
        )


def _detected_gpu() -> tuple[str | None, float | None, int]:
    from runner.gpu import GpuSource

    source = GpuSource()
    snap = source.snapshot()
    source.close()
    if not snap.available or not snap.gpus:
        return None, None, 0
    first = snap.gpus[0]
    memory = first.memory_total_bytes / 1024**3 if first.memory_total_bytes else None
    return first.name, memory, len(snap.gpus)


def _bar(used: float, total: float) -> str:
    filled = min(BAR_CELLS, round(BAR_CELLS * used / total)) if total > 0 else 0
    over = used > total
    return ("█" * filled + "░" * (BAR_CELLS - filled)) + ("▶" if over else " ")


def _params(count: int) -> str:
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"


def _hours(hours: float | None) -> str:
    if hours is None:
        return "-"
    if hours * 3600 < 60:
        return f"{hours * 3600:.0f}s"
    minutes = round(hours * 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _render(report: PlanReport, data_note: str = "") -> None:
    from rich.table import Table
    from rich.text import Text

    from planner.core import METHOD_LABELS

    r = report.request
    spec = report.model
    from tui.widgets.format import one_line

    head = Text.assemble(
        "model ", (one_line(spec.name), "bold"), f" ({_params(spec.total_params)} params)"
    )
    if report.gpu is not None:
        price = report.gpu.price_usd_per_h
        head.append(f"   gpu {r.num_gpus}x {report.gpu.name} ({report.gpu.memory_gib:.1f} GiB")
        head.append(f", ${price:.2f}/h)" if price is not None else ")")
    else:
        head.append("   gpu: none detected or named")
    common.console.print(head)
    common.console.print(
        f"{r.trainer}  seq {r.seq_len}  micro-batch {r.micro_batch}  accum {r.grad_accum}  "
        f"grad-ckpt {'on' if r.grad_ckpt else 'off'}  attn {r.attn}  {r.precision}  "
        f"{r.optimizer}  LoRA r{r.lora_r} {r.lora_targets}"
        + (f"  {r.num_gpus} GPUs {r.strategy}" if r.num_gpus > 1 else "")
    )
    if report.total_tokens:
        common.console.print(f"data: {report.total_tokens / 1e6:,.2f} M training tokens{data_note}")
    table = Table(show_edge=False, pad_edge=False, expand=False)
    table.add_column("method")
    if report.gpu is not None:
        table.add_column(f"VRAM of {report.gpu.memory_gib:.0f} GiB", no_wrap=True)
    table.add_column("peak GiB", justify="right")
    table.add_column("tok/s", justify="right", no_wrap=True)
    table.add_column("time", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("verdict")
    for o in report.options:
        label = SHORT[o.method]
        if o.fits is None:
            verdict = Text("-")
        elif o.fits:
            verdict = Text("fits", "green")
            verdict.append(" ★" if o.method == report.recommended else "")
        else:
            verdict = Text("no fit", "red")
        cells: list[str | Text] = [label]
        if report.gpu is not None:
            cells.append(_bar(o.device_peak_gib, report.gpu.memory_gib))
        cells += [
            f"{o.device_peak_gib:.1f}",
            f"{o.tokens_per_s:,.0f}",
            _hours(o.hours),
            "-" if o.cost_usd is None else f"${o.cost_usd:,.2f}",
            verdict,
        ]
        table.add_row(*cells)
    common.console.print(table)
    common.console.print(("★ " if report.recommended else "") + report.reason)
    for o in report.options:
        if o.fix:
            common.console.print(f"fix for {METHOD_LABELS[o.method]}: {o.fix}")
    for o in report.options:
        parts = [
            f"{name} {value:.2f}" for name, value in o.breakdown.items() if abs(value) >= 0.005
        ]
        common.console.print(
            Text.assemble(
                (f"breakdown ({METHOD_LABELS[o.method]}, GiB):", "dim"), " " + " · ".join(parts)
            )
        )
    if report.renting:
        common.console.print("cheapest place to rent (typical on-demand prices):")
        for rent in report.renting:
            cost = f"${rent.cost_usd:,.2f}" if rent.cost_usd is not None else "-"
            common.console.print(
                f"  {METHOD_LABELS[rent.method]}: {rent.count}x {rent.gpu} "
                f"(${rent.price_usd_per_h:.2f}/h each), {rent.device_peak_gib:.1f} GiB per GPU, "
                f"{_hours(rent.hours)}, {cost}"
            )


class _Parser(argparse.ArgumentParser):
    """argparse with tunedeck's error style: `error: ...` on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"tunedeck plan: {message} (see tunedeck plan --help)")


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return value


def _finite_number(text: str) -> float:
    """A float flag: `nan` and `inf` parse as floats and would reach the plan as nonsense."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _parser() -> _Parser:
    p = _Parser(
        prog="tunedeck plan",
        description="Memory, time and cost of full fine-tuning, LoRA and QLoRA, and which to "
        "use. Give a model (--model) or a preset name or file; flags override the preset.",
    )
    p.add_argument("preset", nargs="?", help="a preset name or YAML file")
    p.add_argument("--model", help="hub id, local model folder or config.json")
    p.add_argument(
        "--method",
        action="append",
        help="full, lora or qlora (repeat or comma-separate; default: all)",
    )
    p.add_argument("--trainer", help="sft or dpo")
    p.add_argument(
        "--gpu", help="GPU name, e.g. H100, 'A100 40GB', RTX 4090 (default: the detected one)"
    )
    p.add_argument("--gpu-memory", type=_finite_number, help="GiB of a custom GPU")
    p.add_argument("--num-gpus", type=_whole_number, help="GPUs per run")
    p.add_argument("--strategy", help="ddp, fsdp, zero2 or zero3")
    p.add_argument("--seq-len", type=_whole_number, help="tokens per sequence (max_length)")
    p.add_argument("--micro-batch", type=_whole_number, help="sequences per GPU per step")
    p.add_argument("--grad-accum", type=_whole_number, help="gradient accumulation steps")
    p.add_argument(
        "--grad-ckpt", action=argparse.BooleanOptionalAction, help="gradient checkpointing"
    )
    p.add_argument("--attn", help="sdpa, flash or eager")
    p.add_argument(
        "--precision",
        help="bf16 (weights and states in bf16, as TRL trains a bf16 checkpoint), fp16 (an fp16 base under adapters), bf16-mixed or fp16-mixed (fp32 master weights), or fp32",
    )
    p.add_argument(
        "--optimizer",
        help="TRL optim name, e.g. adamw_torch_fused, adamw_8bit, paged_adamw_8bit, adafactor",
    )
    p.add_argument("--lora-r", type=_whole_number, help="LoRA rank")
    p.add_argument(
        "--lora-targets", help="q,v | all-linear | module names (q,k,v,o,gate,up,down accepted)"
    )
    p.add_argument("--quant", help="nf4 or nf4-dq (double quantisation)")
    p.add_argument("--liger", action=argparse.BooleanOptionalAction, help="Liger kernels")
    p.add_argument("--examples", type=_whole_number, help="training examples")
    p.add_argument("--avg-tokens", type=_whole_number, help="mean tokens per example")
    p.add_argument("--dataset", help="a JSONL/JSON file to size (rows and approximate tokens)")
    p.add_argument("--epochs", type=_finite_number, help="passes over the data")
    p.add_argument(
        "--price", type=_finite_number, help="USD per GPU-hour (default: the catalogue's)"
    )
    p.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        help="preset override key=value (repeatable)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch only config.json of a hub model the catalogue lacks into the Hugging Face cache",
    )
    p.add_argument("--list-models", action="store_true", help="list the built-in model catalogue")
    p.add_argument("--list-gpus", action="store_true", help="list the GPU catalogue")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    return p


def run_plan(args: list[str]) -> None:
    """`tunedeck plan ARGS`. The flags are parsed here rather than declared to typer: typer
    builds a validator per declared option on every call, which alone took longer than the
    whole plan; `tui.cli.main` calls this directly, without typer."""
    a = _parser().parse_args(args)
    preset, model, trainer, gpu = a.preset, a.model, a.trainer, a.gpu
    method = (
        [m.strip() for item in a.method for m in item.split(",") if m.strip()] if a.method else None
    )
    gpu_memory, num_gpus, strategy = a.gpu_memory, a.num_gpus, a.strategy
    seq_len, micro_batch, grad_accum, grad_ckpt = (
        a.seq_len,
        a.micro_batch,
        a.grad_accum,
        a.grad_ckpt,
    )
    attn, precision, optimizer, lora_r = a.attn, a.precision, a.optimizer, a.lora_r
    lora_targets, quant, liger = a.lora_targets, a.quant, a.liger
    examples, avg_tokens, dataset, epochs, price = (
        a.examples,
        a.avg_tokens,
        a.dataset,
        a.epochs,
        a.price,
    )
    set_, as_json = a.set_, a.as_json
    from planner import PlanError, PlanRequest, plan, request_from_preset

    if a.list_models or a.list_gpus:
        _list_catalogues(a.list_models, a.list_gpus, as_json)
        return
    data_note = ""
    if dataset is not None:
        examples, avg_tokens = _dataset_size(dataset)
        data_note = f" ({examples:,} rows x ~{avg_tokens} tokens, counted from characters / 4)"
    base: PlanRequest
    if preset is not None:
        from presets.store import PresetError, load_preset

        try:
            loaded = load_preset(preset, set_ or [])
        except PresetError as exc:
            fail(exc.lines)
        base = request_from_preset(loaded)
        if method is None:
            others = tuple(m for m in ("full", "lora", "qlora") if m != loaded.method)
            base = replace(base, methods=(loaded.method, *others))
    else:
        if set_:
            fail("--set needs a preset (tunedeck plan PRESET --set key=value)")
        if model is None:
            fail("give a model (--model meta-llama/Llama-3.1-8B) or a preset name or file")
        base = PlanRequest(model=model)
    changes: dict[str, Any] = {
        "model": model,
        "methods": tuple(method) if method else None,
        "trainer": trainer,
        "num_gpus": num_gpus,
        "strategy": strategy,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "grad_ckpt": grad_ckpt,
        "attn": attn,
        "precision": precision,
        "optimizer": optimizer,
        "lora_r": lora_r,
        "lora_targets": lora_targets,
        "quant": quant,
        "liger": liger,
        "examples": examples,
        "avg_tokens": avg_tokens,
        "epochs": epochs,
        "price_usd_per_h": price,
        "gpu_memory_gib": gpu_memory,
    }
    request = replace(base, **{k: v for k, v in changes.items() if v is not None})
    if gpu is not None:
        request = replace(request, gpu=gpu)
    elif request.gpu is None and request.gpu_memory_gib is None:
        name, memory, _count = _detected_gpu()
        if name is not None:
            request = replace(request, gpu=name, gpu_memory_gib=memory)
    if a.download:
        from planner.arch import catalogue

        path = Path(request.model).expanduser()
        if not path.exists() and request.model not in catalogue():
            _download_config(request.model)
    try:
        report = plan(request)
    except PlanError as exc:
        fail(exc.lines)
    if as_json:
        print_json(report.to_json())
        return
    _render(report, data_note)


def plan_command() -> None:
    """Memory, time and cost of full fine-tuning, LoRA and QLoRA, and which to use
    (`tunedeck plan --help` for the flags)."""
    import click

    run_plan(click.get_current_context().args)


def register(app: typer.Typer) -> None:
    app.command(
        "plan",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )(plan_command)
