"""The planner's answer as text: VRAM bars per method against the GPU, time, cost, verdict in
words, the fix for what does not fit, the recommendation and the memory breakdown."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from tui.widgets.format import bar, duration, money

LABELS = {"full": "full FT", "lora": "LoRA", "qlora": "QLoRA"}


def verdict(option: Any) -> tuple[str, str]:
    if option.fits is None:
        return "no GPU chosen", "dim"
    return ("fits", "green") if option.fits else ("does not fit", "bold red")


def plan_text(report: Any, width: int, focus_method: str | None = None) -> Text:
    """The whole plan, sized to `width` cells."""
    out = Text()
    gpu = report.gpu
    req = report.request
    model = report.model
    params_b = getattr(model, "total_params", None)
    out.append("model ", "bold")
    out.append(model.name)
    if callable(params_b):
        params_b = params_b()
    if isinstance(params_b, (int, float)):
        out.append(f" ({params_b / 1e9:.2f} B)")
    out.append("   gpu ", "bold")
    if gpu is not None:
        price = f" ({money(gpu.price_usd_per_h)}/h)" if gpu.price_usd_per_h is not None else ""
        out.append(f"{req.num_gpus}x {gpu.name} {gpu.memory_gib:.1f} GiB{price}")
    else:
        out.append(f"none chosen: times on one {report.speed_gpu}")
    if report.total_tokens:
        out.append("   tokens ", "bold")
        out.append(f"{report.total_tokens / 1e6:,.1f} M")
    out.append("\n\n")
    capacity = gpu.memory_gib if gpu is not None else None
    widest = max((o.device_peak_gib for o in report.options), default=1.0)
    scale = max(capacity or 0.0, widest) or 1.0
    bar_w = max(6, min(40, width - 78))
    for option in report.options:
        star = option.method == report.recommended
        label = LABELS.get(option.method, option.method)
        out.append(f"{label:<8}", "bold" if star else "")
        style = "green" if option.fits else ("red" if option.fits is False else "cyan")
        out.append(bar(option.device_peak_gib / scale, bar_w), style)
        out.append(f" {option.device_peak_gib:6.1f} GiB")
        if capacity:
            if option.fits:
                out.append(f"  {capacity - option.device_peak_gib:5.1f} spare")
            else:
                out.append(f"  {option.device_peak_gib / capacity:4.2f}x GPU ")
        hours = option.hours * 3600 if option.hours is not None else None
        out.append(f"  {duration(hours):>7}  {money(option.cost_usd):>8}  ")
        word, word_style = verdict(option)
        out.append(word, word_style)
        if star:
            out.append(" ★ best", "bold")
        out.append("\n")
        if option.fix and option.fits is False:
            out.append(f"{'':8}fix: {option.fix}\n", "yellow")
    if report.reason:
        out.append("\n★ ", "bold")
        out.append(report.reason + "\n")
    if gpu is None and report.renting:
        req_start = f"{req.box_start_min:g} min to start"
        setup = duration(report.setup_hours * 3600)
        out.append(
            f"\nwhere to rent (a box is paid from its start: {req_start} + weights at "
            f"{req.download_mb_per_s:g} MB/s, {setup} in all):\n",
            "bold",
        )
        for rent in report.renting:
            train = duration(rent.hours * 3600) if rent.hours is not None else "-"
            out.append(
                f"  {LABELS.get(rent.method, rent.method):<7}{' & '.join(rent.picks):<22}"
                f"{rent.count}x {rent.gpu:<10} {money(rent.price_usd_per_h)}/h"
                f"  {rent.tokens_per_s:>8,.0f} tok/s  {train:>7} + setup  {money(rent.cost_usd)}\n"
            )
    shown = (
        focus_method or report.recommended or (report.options[0].method if report.options else None)
    )
    option = report.option(shown) if shown else None
    if option is not None:
        out.append(f"\nbreakdown ({LABELS.get(option.method, option.method)}, GiB): ", "bold")
        out.append(" · ".join(f"{k} {v:.2f}" for k, v in option.breakdown.items()))
        out.append(f"\n{option.tokens_per_s:,.0f} tok/s · {option.step_time_s:.2f} s/step")
        out.append(f" on {report.speed_gpu} ({option.bound}-bound, ")
        out.append(f"{100 * option.utilisation:.0f} % of peak)")
        out.append(f" · {option.trainable_params / 1e6:,.1f} M trainable parameters\n")
    return out
