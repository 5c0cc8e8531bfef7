"""The GPU cards and the host line; they draw the newest telemetry the app's poller posted."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container
from textual.widget import Widget
from textual.widgets import Static

from runner.gpu import GpuInfo
from tui.widgets.format import bar, fit_variants, gib, size_text
from tui.widgets.telemetry import Telemetry


def _level_style(fraction: float | None) -> str:
    if fraction is None:
        return "dim"
    if fraction >= 0.9:
        return "red"
    if fraction >= 0.6:
        return "yellow"
    return "green"


def gpu_lines(gpu: GpuInfo, width: int, compact: bool = False) -> Text:
    """The text of one GPU card: memory, utilisation, sensors and processes."""
    total = gpu.memory_total_bytes
    used = gpu.memory_used_bytes
    mem_frac = used / total if used is not None and total else None
    util_frac = gpu.utilization_pct / 100 if gpu.utilization_pct is not None else None
    mem_text = f" {gib(used)} / {gib(total)} GiB"
    util_text = f" {gpu.utilization_pct} %" if gpu.utilization_pct is not None else " util -"
    sensors = []
    if gpu.temperature_c is not None:
        sensors.append(f"{gpu.temperature_c} °C")
    if gpu.power_w is not None:
        sensors.append(f"{gpu.power_w:.0f} W")
    sensor_text = ("  " + "  ".join(sensors)) if sensors else ""
    out = Text(no_wrap=True, overflow="ellipsis")
    if compact:
        bar_w = max(4, width - 4 - 26)
        out.append("mem ")
        out.append(bar(mem_frac, bar_w), style=_level_style(mem_frac))
        out.append(mem_text)
        out.append(util_text)
        return out
    # The same bar width on every card, whatever the numbers, so cards line up.
    bar_w = max(4, width - 5 - 24)
    out.append("mem  ")
    out.append(bar(mem_frac, bar_w), style=_level_style(mem_frac))
    out.append(mem_text + "\n")
    out.append("util ")
    out.append(bar(util_frac, bar_w), style=_level_style(util_frac))
    out.append(util_text + sensor_text + "\n")
    if gpu.processes:
        first = gpu.processes[0]
        more = f" +{len(gpu.processes) - 1}" if len(gpu.processes) > 1 else ""
        out.append(f"pid {first.pid} {first.name}  {gib(first.used_bytes)} GiB{more}", "dim")
    else:
        out.append("idle", "dim")
    return out


class GpuCard(Static):
    """One GPU."""

    def __init__(self, gpu: GpuInfo, compact: bool = False) -> None:
        super().__init__(classes="gpu-card compact" if compact else "gpu-card")
        self.gpu = gpu
        self.compact = compact
        self._set_title()

    def _set_title(self) -> None:
        self.border_title = Text(f"GPU {self.gpu.index}  {self.gpu.name}")

    def show(self, gpu: GpuInfo) -> None:
        self.gpu = gpu
        self._set_title()
        self.refresh()

    def render(self) -> Text:
        return gpu_lines(self.gpu, self.content_size.width or 40, self.compact)


class GpuPanel(Container):
    """A card per GPU, or a plain line saying there is none."""

    def compose(self) -> ComposeResult:
        yield Static("reading GPUs…", id="gpu-none", classes="gpu-none")

    def on_mount(self) -> None:
        tel = getattr(self.app, "telemetry", None)
        if tel is not None:
            self.show(tel)
        signal = getattr(self.app, "telemetry_signal", None)
        if signal is not None:
            signal.subscribe(self, self.show)

    def show(self, tel: Telemetry) -> None:
        snap = tel.snapshot
        cards = list(self.query(GpuCard))
        none = self.query_one("#gpu-none", Static)
        if not snap.available:
            for card in cards:
                card.remove()
            reason = snap.reason or "no NVIDIA GPU found"
            text = "no NVIDIA GPU found"
            if reason not in ("no NVIDIA GPU found", "no NVIDIA driver found"):
                text += f" ({reason})"
            none.update(Text(text + " · plan for a catalogue GPU with [p]"))
            none.display = True
            return
        none.display = False
        compact = len(snap.gpus) > 4
        self.set_class(len(snap.gpus) > 1, "multi")
        if len(cards) != len(snap.gpus) or any(c.compact != compact for c in cards):
            for card in cards:
                card.remove()
            self.mount_all(GpuCard(g, compact) for g in snap.gpus)
            return
        for card, gpu in zip(cards, snap.gpus, strict=True):
            card.show(gpu)


def host_text(tel: Telemetry, width: int = 1000) -> Text:
    """`host  box-7 · 64 cores · CPU 12 % · RAM 412/503 GiB free · disk 1.2 TiB free at /runs`,
    fitted to `width` cells: the path, the CPU load and the cores give way whole, in that order,
    so a narrow terminal never shows a cut phrase such as `disk 1.2 TiB` without `free`."""
    host = tel.host
    cores = f"{host.cpu_cores_logical} cores"
    cpu = f"CPU {tel.cpu_pct:.0f} %" if tel.cpu_pct is not None else None
    ram = f"RAM {gib(host.ram_available_bytes, 0)}/{gib(host.ram_total_bytes, 0)} GiB free"
    disk: list[str] = []
    if host.disk_free_bytes is not None:
        free = f"disk {size_text(host.disk_free_bytes)} free"
        disk = [f"{free} at {host.disk_path}", free]
    parts: list[tuple[int | tuple[int, ...], list[str]]] = [
        (0, [host.hostname]),
        (3, [cores]),
        (4, [cpu] if cpu else []),
        (1, [ram]),
        ((5, 2), disk),  # the path first, the free space nearly last
    ]
    lead = "host  "
    chosen = fit_variants(parts, width - len(lead), gap=3)
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append("host ", "bold")
    out.append(" " + " · ".join(t for t in chosen if t is not None))
    return out


class HostLine(Widget):
    """CPU, RAM and the disk holding the runs folder."""

    DEFAULT_CSS = "HostLine { height: 1; }"

    def on_mount(self) -> None:
        self._tel: Telemetry | None = getattr(self.app, "telemetry", None)
        signal = getattr(self.app, "telemetry_signal", None)
        if signal is not None:
            signal.subscribe(self, self.show)

    def show(self, tel: Telemetry) -> None:
        self._tel = tel
        self.refresh()

    def render(self) -> Text:
        tel = getattr(self, "_tel", None)
        return host_text(tel, self.size.width) if tel is not None else Text("host  reading…")
