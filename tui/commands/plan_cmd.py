"""`tunedeck plan`: which method fits, what it costs and why, from flags or a preset."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tui.commands import common
from tui.commands.common import fail, print_json

if TYPE_CHECKING:
    import typer

    from planner import PlanReport, PlanRequest
    from planner.request import RequestField

BAR_CELLS = 16
SHORT = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}


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
    from rich.markup import escape
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
        head.append(f"   gpu: none detected or named (times on one {report.speed_gpu})")
    common.console.print(head)
    common.console.print(
        f"{r.trainer}  seq {r.seq_len}  micro-batch {r.micro_batch}  accum {r.grad_accum}  "
        f"grad-ckpt {'on' if r.grad_ckpt else 'off'}  attn {r.attn}  {r.precision}  "
        f"{escape(r.optimizer)}  LoRA r{r.lora_r} {escape(r.lora_targets)} "
        f"dropout {r.lora_dropout:g}  stack {r.stack}"
        + (f"  {r.num_gpus} GPUs {r.strategy}" if r.num_gpus > 1 else ""),
        soft_wrap=False,
    )
    if report.total_tokens:
        common.console.print(
            f"data: {report.total_tokens / 1e6:,.2f} M training tokens{escape(data_note)}"
        )
    else:
        common.console.print(
            "data: size not given (--examples, --avg-tokens, --dataset): no time or cost"
        )
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
    common.console.print(("★ " if report.recommended else "") + escape(report.reason))
    for o in report.options:
        if o.fix:
            common.console.print(f"fix for {METHOD_LABELS[o.method]}: {escape(o.fix)}")
    for o in report.options:
        parts = [
            f"{name} {value:.2f}" for name, value in o.breakdown.items() if abs(value) >= 0.005
        ]
        common.console.print(
            Text.assemble(
                (f"breakdown ({METHOD_LABELS[o.method]}, GiB):", "dim"), " " + " · ".join(parts)
            )
        )
        steps = " · ".join(
            f"{name} {value:.3f}" for name, value in o.step_breakdown_s.items() if value >= 5e-4
        )
        common.console.print(
            f"[dim]step ({METHOD_LABELS[o.method]}, s on {escape(report.speed_gpu)}):[/] "
            f"{o.step_time_s:.3f}: {steps}; {o.bound}-bound, {100 * o.utilisation:.0f} % of peak"
        )
    _render_renting(report)


def _render_renting(report: PlanReport) -> None:
    from planner.core import METHOD_LABELS

    if not report.renting:
        return
    r = report.request
    weights_gb = report.model.total_params * 2 / 1e9
    common.console.print(
        f"where to rent (typical on-demand prices; a box is paid from its start: "
        f"{r.box_start_min:g} min to start + {weights_gb:,.1f} GB of weights at "
        f"{r.download_mb_per_s:g} MB/s, {_hours(report.setup_hours)} in all):"
    )
    for rent in report.renting:
        cost = f"${rent.cost_usd:,.2f}" if rent.cost_usd is not None else "-"
        time = _hours(rent.hours) + f" + {_hours(rent.setup_hours)}" if rent.hours else "-"
        common.console.print(
            f"  {METHOD_LABELS[rent.method]}, {' & '.join(rent.picks)}: {rent.count}x {rent.gpu} "
            f"(${rent.price_usd_per_h:.2f}/h each), {rent.device_peak_gib:.1f} GiB per GPU, "
            f"{rent.tokens_per_s:,.0f} tok/s, {time}, {cost}"
        )


class _Parser(argparse.ArgumentParser):
    """argparse with tunedeck's error style: `error: ...` on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"tunedeck plan: {message} (see tunedeck plan --help)")


def _typed(spec: RequestField) -> Any:
    """argparse's `type` for a request field: the request's own parsing, argparse's error."""
    from planner.request import parse_value

    def convert(text: str) -> Any:
        try:
            return parse_value(spec, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "methods": "METHOD"}


def _parser() -> _Parser:
    """The flags: one per plan request field (its flag, help, choices and default come from
    the field), then those that are not part of a request."""
    from planner.request import request_fields

    p = _Parser(
        prog="tunedeck plan",
        description="Memory, time and cost of full fine-tuning, LoRA and QLoRA, and which to "
        "use. Give a model (--model) or a preset name or file; flags override the preset.",
    )
    p.add_argument("preset", nargs="?", help="a preset name or YAML file")
    for spec in request_fields():
        info = spec.info
        default = spec.default_text() or info.unset
        kwargs: dict[str, Any] = {"dest": spec.name, "default": None}
        if spec.kind not in ("bool",):
            kwargs["metavar"] = _METAVARS.get(spec.kind, "TEXT") if info.choices is None else None
        kwargs["help"] = f"{info.help} (default: {default})".replace("%", "%%")
        if spec.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.kind == "methods":
            kwargs["action"] = "append"
        else:
            kwargs["type"] = _typed(spec)
            if info.choices is not None:
                kwargs["choices"] = info.choices
        p.add_argument(info.flag, **kwargs)
    p.add_argument(
        "--dataset",
        help="a JSONL, JSON, CSV or Parquet file (or folder) to size: its usable rows and mean "
        "tokens per row (characters / 4) become --examples and --avg-tokens unless given",
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


def _changes(a: argparse.Namespace) -> dict[str, Any]:
    """The request fields given on the command line."""
    from planner.request import parse_value, request_fields

    out: dict[str, Any] = {}
    for spec in request_fields():
        value = getattr(a, spec.name)
        if value is None:
            continue
        if spec.kind == "methods":
            try:
                value = parse_value(spec, ",".join(value))
            except ValueError as exc:
                fail(f"{spec.info.flag}: {exc}")
        out[spec.name] = value
    return out


def build_request(args: list[str]) -> tuple[PlanRequest, argparse.Namespace, str]:
    """The plan request the command line describes: a preset or the defaults, then every
    flag given, then the data file's size, then the detected GPU if none is named."""
    a = _parser().parse_args(args)
    from planner import PlanRequest, request_from_preset

    changes = _changes(a)
    base: PlanRequest
    if a.preset is not None:
        from presets.store import PresetError, load_preset

        try:
            loaded = load_preset(a.preset, a.set_ or [])
        except PresetError as exc:
            fail(exc.lines)
        base = request_from_preset(loaded)
        if "methods" not in changes:
            others = tuple(m for m in ("full", "lora", "qlora") if m != loaded.method)
            base = replace(base, methods=(loaded.method, *others))
    else:
        if a.set_:
            fail("--set needs a preset (tunedeck plan PRESET --set key=value)")
        if "model" not in changes and not (a.list_models or a.list_gpus):
            fail("give a model (--model meta-llama/Llama-3.1-8B) or a preset name or file")
        base = PlanRequest(model=changes.get("model", ""))
    request = replace(base, **changes)
    data_note = ""
    if a.dataset is not None:
        from runner.data.errors import DataError
        from runner.data.size import size_dataset

        try:
            size = size_dataset(a.dataset, request.trainer)
        except DataError as exc:
            fail([f"--dataset {line}" for line in exc.lines])
        sized = {"examples": size.rows, "avg_tokens": size.tokens_per_row}
        request = replace(request, **{k: v for k, v in sized.items() if k not in changes})
        data_note = f" ({size.note()})"
    if request.gpu is None and request.gpu_memory_gib is None and not a.list_gpus:
        name, memory, _count = _detected_gpu()
        if name is not None:
            request = replace(request, gpu=name, gpu_memory_gib=memory)
    return request, a, data_note


def run_plan(args: list[str]) -> None:
    """`tunedeck plan ARGS`. The flags are parsed here rather than declared to typer: typer
    builds a validator per declared option on every call, which alone took longer than the
    whole plan; `tui.cli.main` calls this directly, without typer."""
    request, a, data_note = build_request(args)
    if a.list_models or a.list_gpus:
        _list_catalogues(a.list_models, a.list_gpus, a.as_json)
        return
    from planner import PlanError, plan

    if a.download:
        from planner.arch import catalogue

        path = Path(request.model).expanduser()
        if not path.exists() and request.model not in catalogue():
            _download_config(request.model)
    try:
        report = plan(request)
    except PlanError as exc:
        fail(exc.lines)
    if a.as_json:
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
