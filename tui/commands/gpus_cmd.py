"""`tunedeck gpus`: what the box has."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from presets import locations
from runner.gpu import GpuSource
from runner.host import host_info
from tui.commands.common import console, gib, print_json


def gpus(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    runs_dir: Annotated[
        str | None, typer.Option("--runs-dir", help="Runs folder whose disk is reported.")
    ] = None,
) -> None:
    """List the NVIDIA GPUs (CUDA order, CUDA_VISIBLE_DEVICES applied) and the host."""
    source = GpuSource()
    snap = source.snapshot()
    source.close()
    host = host_info(locations.runs_dir(runs_dir))
    if as_json:
        data = snap.to_json()
        data["host"] = host.to_json()
        print_json(data)
        return
    if snap.available:
        console.print(
            f"driver {snap.driver_version or '?'}  CUDA {snap.cuda_version or '?'}  "
            f"{len(snap.gpus)} GPU{'s' if len(snap.gpus) != 1 else ''}"
        )
        table = Table(expand=False)
        for col in (
            "#",
            "name",
            "memory used/total GiB",
            "free GiB",
            "util",
            "temp",
            "power",
            "cc",
            "bf16",
        ):
            table.add_column(col)
        for g in snap.gpus:
            power = (
                f"{g.power_w:.0f}/{g.power_limit_w:.0f} W"
                if g.power_w is not None and g.power_limit_w is not None
                else "-"
            )
            cc = g.to_json()["compute_capability"] or "-"
            table.add_row(
                str(g.index),
                g.name,
                f"{gib(g.memory_used_bytes)} / {gib(g.memory_total_bytes)}",
                gib(g.memory_free_bytes),
                f"{g.utilization_pct} %" if g.utilization_pct is not None else "-",
                f"{g.temperature_c} °C" if g.temperature_c is not None else "-",
                power,
                cc,
                {True: "yes", False: "no", None: "-"}[g.bf16],
            )
        console.print(table)
        for g in snap.gpus:
            for p in g.processes:
                console.print(f"  GPU {g.index}: pid {p.pid} {p.name}  {gib(p.used_bytes)} GiB")
    else:
        reason = snap.reason or "no NVIDIA GPU found"
        if reason == "no NVIDIA GPU found":
            console.print("no NVIDIA GPU found on this machine")
        else:
            console.print(f"no NVIDIA GPU found on this machine ({reason})")
    free_disk = gib(host.disk_free_bytes, 0)
    console.print(
        f"host {host.hostname}: {host.cpu_model}, {host.cpu_cores_logical} cores, "
        f"RAM {gib(host.ram_available_bytes)} of {gib(host.ram_total_bytes)} GiB available, "
        f"disk {free_disk} GiB free at {host.disk_path}"
    )


def register(app: typer.Typer) -> None:
    app.command("gpus")(gpus)
