"""`tunedeck plan`: which method fits, what it costs and why, from flags or a preset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tui.commands.common import console, fail, print_json

if TYPE_CHECKING:
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


def _hours(hours: float | None) -> str:
    if hours is None:
        return "-"
    minutes = round(hours * 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _render(report: PlanReport) -> None:
    from rich.table import Table

    from planner.core import METHOD_LABELS

    r = report.request
    spec = report.model
    head = f"model [bold]{spec.name}[/] ({spec.total_params / 1e9:.2f} B params)"
    if report.gpu is not None:
        price = report.gpu.price_usd_per_h
        head += f"   gpu {r.num_gpus}x {report.gpu.name} ({report.gpu.memory_gib:.1f} GiB"
        head += f", ${price:.2f}/h)" if price is not None else ")"
    else:
        head += "   gpu: none detected or named"
    console.print(head)
    console.print(
        f"{r.trainer}  seq {r.seq_len}  micro-batch {r.micro_batch}  accum {r.grad_accum}  "
        f"grad-ckpt {'on' if r.grad_ckpt else 'off'}  attn {r.attn}  {r.precision}  "
        f"{r.optimizer}  LoRA r{r.lora_r} {r.lora_targets}"
        + (f"  {r.num_gpus} GPUs {r.strategy}" if r.num_gpus > 1 else "")
    )
    if report.total_tokens:
        console.print(f"data: {report.total_tokens / 1e6:,.1f} M training tokens")
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
            verdict = "-"
        elif o.fits:
            verdict = "[green]fits[/]" + (" ★" if o.method == report.recommended else "")
        else:
            verdict = "[red]no fit[/]"
        cells = [label]
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
    console.print(table)
    console.print(("★ " if report.recommended else "") + report.reason)
    for o in report.options:
        if o.fix:
            console.print(f"fix for {METHOD_LABELS[o.method]}: {o.fix}")
    for o in report.options:
        parts = [
            f"{name} {value:.2f}" for name, value in o.breakdown.items() if abs(value) >= 0.005
        ]
        console.print(f"[dim]breakdown ({METHOD_LABELS[o.method]}, GiB):[/] " + " · ".join(parts))
    if report.renting:
        console.print("cheapest place to rent (typical on-demand prices):")
        for rent in report.renting:
            cost = f"${rent.cost_usd:,.2f}" if rent.cost_usd is not None else "-"
            console.print(
                f"  {METHOD_LABELS[rent.method]}: {rent.count}x {rent.gpu} "
                f"(${rent.price_usd_per_h:.2f}/h each), {rent.device_peak_gib:.1f} GiB per GPU, "
                f"{_hours(rent.hours)}, {cost}"
            )


def plan_command(
    preset: Annotated[
        str | None, typer.Argument(help="A preset name or YAML file; flags override it.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Hub id, local folder or config.json.")
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", help="full, lora or qlora (repeat; default: all)."),
    ] = None,
    trainer: Annotated[str | None, typer.Option("--trainer", help="sft or dpo.")] = None,
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="GPU name (default: the detected one).")
    ] = None,
    gpu_memory: Annotated[
        float | None, typer.Option("--gpu-memory", help="GiB of a custom GPU.")
    ] = None,
    num_gpus: Annotated[int | None, typer.Option("--num-gpus", help="GPUs per run.")] = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="ddp, fsdp, zero2 or zero3.")
    ] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per sequence.")] = None,
    micro_batch: Annotated[
        int | None, typer.Option("--micro-batch", help="Sequences per GPU step.")
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option("--grad-accum", help="Accumulation steps.")
    ] = None,
    grad_ckpt: Annotated[
        bool | None, typer.Option("--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing.")
    ] = None,
    attn: Annotated[str | None, typer.Option("--attn", help="sdpa, flash or eager.")] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="bf16, bf16-mixed, fp16-mixed or fp32.")
    ] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="TRL optim name.")] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank.")] = None,
    lora_targets: Annotated[
        str | None, typer.Option("--lora-targets", help="q,v | all-linear | module names.")
    ] = None,
    quant: Annotated[str | None, typer.Option("--quant", help="nf4 or nf4-dq.")] = None,
    liger: Annotated[bool | None, typer.Option("--liger/--no-liger", help="Liger kernels.")] = None,
    examples: Annotated[int | None, typer.Option("--examples", help="Training examples.")] = None,
    avg_tokens: Annotated[
        int | None, typer.Option("--avg-tokens", help="Mean tokens per example.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="JSONL/JSON file to size.")
    ] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the data.")] = None,
    price: Annotated[float | None, typer.Option("--price", help="USD per GPU-hour.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Preset override key=value (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Memory, time and cost of full fine-tuning, LoRA and QLoRA, and which to use."""
    from planner import PlanError, PlanRequest, plan, request_from_preset

    if dataset is not None:
        examples, avg_tokens = _dataset_size(dataset)
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
    try:
        report = plan(request)
    except PlanError as exc:
        fail(exc.lines)
    if as_json:
        print_json(report.to_json())
        return
    _render(report)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
