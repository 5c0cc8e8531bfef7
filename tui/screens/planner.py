"""Planner: pick a model, GPU, method and settings; the VRAM, time and cost of each method
update as you type. `u` turns the plan into a preset in the editor."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import Footer, Input, Label, Select, Static

from tui.widgets.plan_view import plan_text

REPLAN_DELAY_S = 0.15
DETECTED = "detected"
NO_GPU = "none"

# (id, label, default, width) of the number fields.
NUMBER_FIELDS: tuple[tuple[str, str, str, int], ...] = (
    ("num-gpus", "GPUs", "1", 4),
    ("seq-len", "seq", "2048", 7),
    ("micro-batch", "micro-batch", "1", 4),
    ("grad-accum", "accum", "8", 4),
    ("lora-r", "LoRA r", "16", 5),
)


@dataclass(frozen=True)
class PlanInputs:
    """What the form says, before the data file (if any) is measured."""

    model: str
    gpu: str | None
    gpu_memory_gib: float | None
    num_gpus: int
    method: str
    seq_len: int
    micro_batch: int
    grad_accum: int
    grad_ckpt: bool
    lora_r: int
    lora_targets: str
    data: str
    epochs: float
    price_usd_per_h: float | None


def data_size(text: str) -> tuple[int | None, int | None, str | None]:
    """(examples, average tokens, note) from the data field: a number of examples, or a JSONL
    file whose lines are counted and whose tokens are estimated at 4 bytes each. File I/O:
    call from a worker."""
    text = text.strip()
    if not text:
        return None, None, None
    if re.fullmatch(r"[\d_,]+", text):
        return int(text.replace(",", "").replace("_", "")), None, None
    path = Path(text).expanduser()
    if not path.is_file():
        return None, None, f"data: {text}: no such file (give a file or a number of examples)"
    rows = 0
    size = 0
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                rows += 1
                size += len(line)
    if rows == 0:
        return None, None, f"data: {text}: no rows"
    return (
        rows,
        max(1, size // rows // 4),
        f"{rows:,} rows, ~{size // rows // 4} tokens each (4 bytes/token)",
    )


class PlannerScreen(Screen[None]):
    """Plan a fine-tune before renting or launching."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+u", "use_plan", "use this plan", priority=True),
        Binding("escape", "back", "back"),
    ]

    class Planned(Message):
        def __init__(self, report: Any | None, problems: list[str], note: str | None) -> None:
            super().__init__()
            self.report = report
            self.problems = problems
            self.note = note

    def __init__(self) -> None:
        super().__init__()
        self.report: Any | None = None
        self.inputs: PlanInputs | None = None
        self._timer: Any = None

    def compose(self) -> ComposeResult:
        from planner import gpu_catalogue
        from planner.arch import catalogue

        models = list(catalogue())
        yield Static(Text("planner"), id="planner-title", classes="title-bar")
        with VerticalScroll(id="planner-form"):
            with Horizontal(classes="plan-row"):
                yield Label("model", classes="plan-label")
                yield Input(
                    "meta-llama/Llama-3.1-8B",
                    id="model",
                    suggester=SuggestFromList(models, case_sensitive=False),
                    placeholder="hub id from the catalogue, a local folder or config.json",
                )
            with Horizontal(classes="plan-row"):
                yield Label("gpu", classes="plan-label")
                gpus = [(f"{g.name} ({g.memory_gib:.0f} GiB)", g.name) for g in gpu_catalogue()]
                yield Select(
                    [("detected GPU", DETECTED), ("none: renting view", NO_GPU), *gpus],
                    value=DETECTED,
                    allow_blank=False,
                    id="gpu",
                )
                yield Label("method", classes="plan-label-short")
                yield Select(
                    [
                        ("compare all", "all"),
                        ("full", "full"),
                        ("LoRA", "lora"),
                        ("QLoRA", "qlora"),
                    ],
                    value="all",
                    allow_blank=False,
                    id="method",
                )
            with Horizontal(classes="plan-row"):
                for field_id, label, default, _ in NUMBER_FIELDS:
                    yield Label(label, classes="plan-label-short")
                    yield Input(default, id=field_id, type="integer", classes="plan-number")
            with Horizontal(classes="plan-row"):
                yield Label("grad ckpt", classes="plan-label-short")
                yield Select(
                    [("on", "on"), ("off", "off")], value="on", allow_blank=False, id="grad-ckpt"
                )
                yield Label("targets", classes="plan-label-short")
                yield Input("all-linear", id="lora-targets")
            with Horizontal(classes="plan-row"):
                yield Label("data", classes="plan-label")
                yield Input(
                    "12000",
                    id="data",
                    placeholder="number of examples, or a JSONL file",
                )
                yield Label("tok/ex", classes="plan-label-short")
                yield Input("780", id="avg-tokens", type="integer", classes="plan-number")
                yield Label("epochs", classes="plan-label-short")
                yield Input("3", id="epochs", type="number", classes="plan-number")
                yield Label("$/h", classes="plan-label-short")
                yield Input(
                    "", id="price", type="number", placeholder="auto", classes="plan-number"
                )
        yield Static("", id="planner-problems")
        with VerticalScroll(id="plan-box") as box:
            box.border_title = "plan"
            yield Static(Text("planning…", "dim"), id="plan-result")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#model", Input).focus()
        self._replan()

    # ------------------------------------------------------------------ input -> plan

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(REPLAN_DELAY_S, self._replan)

    def _read_inputs(self) -> tuple[PlanInputs | None, list[str]]:
        problems: list[str] = []

        def value(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value.strip()

        def integer(widget_id: str, label: str) -> int:
            text = value(widget_id)
            if not text.isdigit() or int(text) < 1:
                problems.append(f"{label}: a whole number of 1 or more, got {text!r}")
                return 1
            return int(text)

        def number(widget_id: str, label: str, optional: bool) -> float | None:
            text = value(widget_id)
            if not text and optional:
                return None
            try:
                result = float(text)
            except ValueError:
                problems.append(f"{label}: a number, got {text!r}")
                return None
            if result < 0 or (result == 0 and not optional):
                problems.append(f"{label}: must be more than 0, got {text}")
                return None
            return result

        gpu_choice = str(self.query_one("#gpu", Select).value)
        gpu: str | None = gpu_choice
        memory: float | None = None
        if gpu_choice == NO_GPU:
            gpu = None
        elif gpu_choice == DETECTED:
            tel = self.app.telemetry  # type: ignore[attr-defined]
            if tel is not None and tel.snapshot.available:
                first = tel.snapshot.gpus[0]
                gpu, memory = first.name, first.memory_total_gib
            else:
                gpu = None
        model = value("model")
        if not model:
            problems.append("model: give a hub id, a local folder or a config.json")
        inputs = PlanInputs(
            model=model,
            gpu=gpu,
            gpu_memory_gib=memory,
            num_gpus=integer("num-gpus", "GPUs"),
            method=str(self.query_one("#method", Select).value),
            seq_len=integer("seq-len", "seq"),
            micro_batch=integer("micro-batch", "micro-batch"),
            grad_accum=integer("grad-accum", "accum"),
            grad_ckpt=self.query_one("#grad-ckpt", Select).value == "on",
            lora_r=integer("lora-r", "LoRA r"),
            lora_targets=value("lora-targets") or "all-linear",
            data=value("data"),
            epochs=number("epochs", "epochs", optional=False) or 1.0,
            price_usd_per_h=number("price", "$/h", optional=True),
        )
        return (None if problems else inputs), problems

    def _replan(self) -> None:
        inputs, problems = self._read_inputs()
        box = self.query_one("#planner-problems", Static)
        if inputs is None:
            box.update(Text("\n".join(problems), "bold red"))
            return
        box.update("")
        avg_text = self.query_one("#avg-tokens", Input).value.strip()
        avg_tokens = int(avg_text) if avg_text.isdigit() and int(avg_text) > 0 else None
        self.inputs = inputs
        self._plan(inputs, avg_tokens)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _plan(self, inputs: PlanInputs, avg_tokens: int | None) -> None:
        from planner import PlanError, PlanRequest

        examples, measured_avg, note = data_size(inputs.data)
        if note is not None and examples is None:
            self.post_message(self.Planned(None, [note], None))
            return
        plan_fn = self.app.plan_fn  # type: ignore[attr-defined]
        if plan_fn is None:
            self.post_message(self.Planned(None, ["the planner is not available"], None))
            return
        methods = ("full", "lora", "qlora") if inputs.method == "all" else (inputs.method,)
        request = PlanRequest(
            model=inputs.model,
            methods=methods,
            gpu=inputs.gpu,
            gpu_memory_gib=inputs.gpu_memory_gib,
            num_gpus=inputs.num_gpus,
            strategy="fsdp" if inputs.num_gpus > 1 else "ddp",
            seq_len=inputs.seq_len,
            micro_batch=inputs.micro_batch,
            grad_accum=inputs.grad_accum,
            grad_ckpt=inputs.grad_ckpt,
            lora_r=inputs.lora_r,
            lora_alpha=2 * inputs.lora_r,
            lora_targets=inputs.lora_targets,
            examples=examples,
            avg_tokens=measured_avg or avg_tokens,
            epochs=inputs.epochs,
            price_usd_per_h=inputs.price_usd_per_h,
        )
        try:
            report = plan_fn(request)
        except PlanError as exc:
            self.post_message(self.Planned(None, exc.lines, None))
            return
        self.post_message(self.Planned(report, [], note))

    @on(Planned)
    def _planned(self, message: Planned) -> None:
        problems = self.query_one("#planner-problems", Static)
        if message.report is None:
            problems.update(Text("\n".join(message.problems), "bold red"))
            return
        self.report = message.report
        problems.update(Text(message.note or "", "dim"))
        result = self.query_one("#plan-result", Static)
        method = self.inputs.method if self.inputs and self.inputs.method != "all" else None
        result.update(plan_text(message.report, result.size.width or 100, method))

    # ------------------------------------------------------------------ plan -> preset

    def preset_data(self) -> dict[str, Any] | None:
        """A preset (as YAML data) that trains what the plan describes."""
        if self.report is None or self.inputs is None:
            return None
        inputs = self.inputs
        method = inputs.method if inputs.method != "all" else (self.report.recommended or "lora")
        short = inputs.model.rstrip("/").split("/")[-1].lower()
        name = re.sub(r"[^a-z0-9._-]+", "-", f"{method}-{short}").strip("-.")[:64] or "plan"
        data_path = (
            inputs.data if inputs.data and not inputs.data.replace(",", "").isdigit() else ""
        )
        targets: Any = inputs.lora_targets
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        training: dict[str, Any] = {
            "num_train_epochs": inputs.epochs,
            "per_device_train_batch_size": inputs.micro_batch,
            "gradient_accumulation_steps": inputs.grad_accum,
            "max_length": inputs.seq_len,
            "gradient_checkpointing": inputs.grad_ckpt,
            "learning_rate": 1e-5 if method == "full" else 2e-4,
            "bf16": True,
            "logging_steps": 10,
            "save_steps": 200,
        }
        data: dict[str, Any] = {
            "name": name,
            "description": f"{method} of {inputs.model}, from the planner",
            "model": inputs.model,
            "dataset": {"path": data_path or "path/to/train.jsonl"},
            "trainer": "sft",
            "method": method,
            "lora": {"r": inputs.lora_r, "alpha": 2 * inputs.lora_r, "target_modules": targets},
            "training": training,
            "launch": {
                "num_gpus": inputs.num_gpus,
                "strategy": "single" if inputs.num_gpus == 1 else "fsdp",
            },
        }
        if self.report.gpu is not None:
            data["gpu"] = self.report.gpu.name
        if inputs.price_usd_per_h is not None:
            data["price_usd_per_h"] = inputs.price_usd_per_h
        return data

    def action_use_plan(self) -> None:
        data = self.preset_data()
        if data is None:
            self.notify("no plan yet: fix the inputs first", severity="warning")
            return
        self.app.open_presets(initial=data)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()
