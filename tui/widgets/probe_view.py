"""A probe's result as text: planned against probed, the verdict, the largest micro-batch that
fits and what to change. Used by `tunedeck probe` and by the app's probe screen."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from runner.probe_verdict import fmt_gib as _gib
from tui.widgets.format import duration, money


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:,.1f}M"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.1:
        return f"{value * 1000:.2g} ms" if value < 0.01 else f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def probe_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, planned, probed) rows."""
    eta = duration(result.get("eta_s"))
    if result.get("eta_longest_s") is not None:
        eta += f" ({duration(result['eta_longest_s'])} if all were the longest)"
    steps = result.get("total_steps")
    fits = {True: "fits", False: "does not fit", None: "-"}
    peak = _gib(result["measured_peak_gib"])
    if result["measured_peak_gib"] is None and result.get("failed_micro_batch"):
        peak = f"out of memory at micro-batch {result['failed_micro_batch']}"
    return [
        ("peak memory", _gib(result.get("planned_peak_gib")), peak),
        ("tokens/s", _rate(result.get("planned_tokens_per_s")), _rate(result["tokens_per_s"])),
        ("step time", _seconds(result.get("planned_step_time_s")), _seconds(result["step_time_s"])),
        (
            f"ETA ({steps} steps)" if steps else "ETA",
            duration(result.get("planned_eta_s")),
            eta,
        ),
        ("cost", money(result.get("planned_cost_usd")), money(result.get("cost_usd"))),
        ("verdict", fits[result.get("planned_fits")], fits[result["fits"]]),
    ]


def probe_table(result: dict[str, Any]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("")
    table.add_column("planned", justify="right")
    table.add_column("probed", justify="right")
    for what, planned, probed in probe_rows(result):
        style = ""
        if what == "verdict":
            style = {True: "green", False: "bold red"}.get(result["fits"], "")
        table.add_row(Text(what, "bold"), Text(planned), Text(probed, style))
    return table


def probe_notes(result: dict[str, Any]) -> list[Text]:
    """The lines under the table: verdict, micro-batch room, fix, first batch, where."""
    lines = [Text(result["verdict"], {True: "green", False: "bold red"}.get(result["fits"], ""))]
    best = result.get("max_micro_batch")
    if best is not None:
        lines.append(
            Text(f"largest micro-batch that fits: {best} ({result['max_micro_batch_how']})")
        )
    if result.get("fix"):
        lines.append(Text(f"fix: {result['fix']}", "yellow"))
    first = result["first_batch"]
    data = result["data"]
    if first["rows"]:
        lines.append(
            Text(
                f"first batch: rows {', '.join(str(r) for r in first['rows'])} "
                f"({', '.join(str(t) for t in first['tokens'])} tokens; the data's longest is "
                f"{data['max_tokens']}, its mean {data['mean_tokens']:.0f})"
            )
        )
    else:
        lines.append(Text(f"no step ran: {result['phases'][0]['error']}"))
    lines.append(Text(f"memory: {result['peak_source']}", "dim"))
    if result.get("plan_note"):
        lines.append(Text(f"plan: {result['plan_note']}", "dim"))
    return lines


def probe_header(result: dict[str, Any]) -> Text:
    timed = result.get("timed_micro_batch")
    speed_note = (
        f", speed at micro-batch {timed}" if timed and timed != result["micro_batch"] else ""
    )
    return Text(
        f"probe {result['probe_id']} on {result['device']}: micro-batch {result['micro_batch']}, "
        f"max_length {result['max_length']}, {result['timed_steps']} timed steps{speed_note}"
    )
