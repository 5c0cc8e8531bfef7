"""Planner: pick a model, GPU, method and settings; the VRAM, time and cost of each method
update as you type. `ctrl+u` turns the plan into a preset in the editor.

The form is the plan request itself: every field's label, default, choices, parsing and help
come from `planner.request`, the same definition the `tunedeck plan` flags come from, so the
same inputs give the same plan here and on the command line. Only the layout is chosen here."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widget import Widget
from textual.widgets import Footer, Input, Label, Select, Static

from tui.widgets.plan_view import plan_text

REPLAN_DELAY_S = 0.15
DETECTED = "detected"
NO_GPU = "none"
ALL_METHODS = "all"
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"
# What the form assumes about the data until it is told: shown as an assumption beside the
# data fields, so times and costs are never silently about someone else's data.
ASSUMED_DATA = {"examples": "12000", "avg_tokens": "780"}
# Request fields in the order the form shows them (a grid, four to a row), and those that take
# two cells.
FORM_FIELDS: tuple[str, ...] = (
    "model",
    "gpu",
    "methods",
    "num_gpus",
    "seq_len",
    "micro_batch",
    "grad_accum",
    "grad_ckpt",
    "attn",
    "precision",
    "optimizer",
    "examples",
    "avg_tokens",
    "epochs",
    "lora_r",
    "lora_alpha",
    "lora_targets",
    "lora_dropout",
    "quant",
    "liger",
    "stack",
    "trainer",
    "strategy",
    "precompute_ref",
    "max_steps",
    "dataset_tokens",
    "price_usd_per_h",
    "gpu_memory_gib",
    "box_start_min",
    "download_mb_per_s",
)
WIDE_FIELDS = ("model", "examples")
STRATEGY_TO_LAUNCH = {"ddp": "ddp", "zero2": "fsdp", "fsdp": "fsdp", "zero3": "deepspeed-zero3"}
ATTN_IMPLEMENTATION = {"flash": "flash_attention_2", "eager": "eager"}


def widget_id(name: str) -> str:
    """A field's widget id: its flag without the dashes (`--seq-len` -> `seq-len`)."""
    from planner.request import request_field

    return request_field(name).info.flag.lstrip("-")


def looks_like_count(text: str) -> bool:
    return bool(re.fullmatch(r"[\d_,]+", text.strip()))


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
        """The newest plan the screen computed (and shows)."""
        self._timer: Any = None
        self._touched: set[str] = set()
        """Data fields the person has edited (their values are no longer assumed)."""

    # ------------------------------------------------------------------ the form

    def _field_widget(self, name: str) -> Widget:
        from planner import gpu_catalogue
        from planner.arch import catalogue
        from planner.request import request_field

        spec = request_field(name)
        info = spec.info
        wid = widget_id(name)
        widget: Widget
        if name == "gpu":
            gpus = [(f"{g.name} ({g.memory_gib:.0f} GiB)", g.name) for g in gpu_catalogue()]
            options = [("detected GPU", DETECTED), ("none: renting view", NO_GPU), *gpus]
            widget = Select(options, value=DETECTED, allow_blank=False, id=wid)
        elif name == "methods":
            choices = [("compare all", ALL_METHODS), *((m, m) for m in info.choices or ())]
            widget = Select(choices, value=ALL_METHODS, allow_blank=False, id=wid)
        elif spec.kind == "bool":
            value = spec.default_text()
            widget = Select([("on", "on"), ("off", "off")], value=value, allow_blank=False, id=wid)
        elif info.choices is not None:
            options = [(c, c) for c in info.choices]
            widget = Select(options, value=spec.default, allow_blank=False, id=wid)
        elif name == "model":
            widget = Input(
                DEFAULT_MODEL,
                id=wid,
                suggester=SuggestFromList(list(catalogue()), case_sensitive=False),
                placeholder=info.help,
            )
        elif name == "examples":
            widget = Input(
                ASSUMED_DATA["examples"], id=wid, placeholder="examples, or a data file or folder"
            )
        else:
            value = ASSUMED_DATA.get(name, spec.default_text())
            kind = {"int": "integer", "float": "number"}.get(spec.kind, "text")
            widget = Input(value, id=wid, type=kind, placeholder="-")
        widget.tooltip = f"{info.flag}: {info.help}"
        return widget

    def compose(self) -> ComposeResult:
        from planner.request import request_field

        yield Static(Text("planner"), id="planner-title", classes="title-bar")
        with VerticalScroll(id="planner-form"):
            for name in FORM_FIELDS:
                classes = "plan-cell plan-wide-cell" if name in WIDE_FIELDS else "plan-cell"
                with Horizontal(classes=classes):
                    label = "data" if name == "examples" else request_field(name).info.label
                    yield Label(label, classes="plan-label-short")
                    yield self._field_widget(name)
        yield Label("", id="data-note")
        yield Static("", id="planner-problems")
        with VerticalScroll(id="plan-box") as box:
            box.border_title = "plan"
            yield Static(Text("planning…", "dim"), id="plan-result")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#model", Input).focus()
        self._show_data_note()
        self._replan()

    def _show_data_note(self) -> None:
        assumed = not (self._touched & {"examples", "avg_tokens"})
        text = Text("assumed: type your data size or a file", "yellow") if assumed else Text("")
        self.query_one("#data-note", Label).update(text)

    # ------------------------------------------------------------------ input -> plan

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self, event: Input.Changed | Select.Changed) -> None:
        for name in ("examples", "avg_tokens"):
            if event.control.id == widget_id(name) and event.value != ASSUMED_DATA[name]:
                self._touched.add(name)
                self._show_data_note()
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(REPLAN_DELAY_S, self._replan)

    def _text(self, name: str) -> str:
        widget = self.query_one(f"#{widget_id(name)}")
        if isinstance(widget, Select):
            return str(widget.value)
        assert isinstance(widget, Input)
        return widget.value

    def read_request(self) -> tuple[dict[str, Any], str | None, list[str]]:
        """(request values, a data file to size or None, problems) from the form."""
        from planner.request import parse_value, request_field

        values: dict[str, Any] = {}
        problems: list[str] = []
        data_file: str | None = None
        for name in FORM_FIELDS:
            text = self._text(name)
            if name == "gpu":
                values.update(self._gpu_values(text))
                continue
            if name == "methods" and text == ALL_METHODS:
                continue  # the request's default: every method
            if name == "examples" and text.strip() and not looks_like_count(text):
                data_file = text.strip()
                continue
            spec = request_field(name)
            try:
                value = parse_value(spec, text)
            except ValueError as exc:
                problems.append(f"{spec.info.label} ({spec.info.flag}): {exc}")
                continue
            if value is not None:
                values[name] = value
        if not values.get("model"):
            problems.append("model: give a hub id, a local folder or a config.json")
        return values, data_file, problems

    def _gpu_values(self, choice: str) -> dict[str, Any]:
        """A detected GPU is planned with its name and the memory the driver reports, as
        `tunedeck plan` plans it."""
        if choice == NO_GPU:
            return {}
        if choice == DETECTED:
            tel = self.app.telemetry  # type: ignore[attr-defined]
            if tel is not None and tel.snapshot.available and tel.snapshot.gpus:
                first = tel.snapshot.gpus[0]
                return {"gpu": first.name, "gpu_memory_gib": first.memory_total_gib}
            return {}
        return {"gpu": choice}

    def _replan(self) -> None:
        values, data_file, problems = self.read_request()
        box = self.query_one("#planner-problems", Static)
        if problems:
            box.update(Text("\n".join(problems), "bold red"))
            return
        box.update("")
        self._plan(values, data_file, "avg_tokens" in self._touched)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _plan(self, values: dict[str, Any], data_file: str | None, avg_given: bool) -> None:
        from planner import PlanError, PlanRequest

        plan_fn = self.app.plan_fn  # type: ignore[attr-defined]
        if plan_fn is None:
            self.post_message(self.Planned(None, ["the planner is not available"], None))
            return
        note = None
        if data_file is not None:
            from runner.data.errors import DataError
            from runner.data.size import size_dataset

            try:
                size = size_dataset(data_file, values.get("trainer", "sft"))
            except DataError as exc:
                self.post_message(self.Planned(None, [f"data: {line}" for line in exc.lines], None))
                return
            values = {**values, "examples": size.rows}
            if not avg_given:
                values["avg_tokens"] = size.tokens_per_row
            note = f"data: {size.note()}"
        try:
            report = plan_fn(PlanRequest(**values))
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
        methods = message.report.request.methods
        focus = methods[0] if len(methods) == 1 else None
        result.update(plan_text(message.report, result.size.width or 100, focus))

    # ------------------------------------------------------------------ plan -> preset

    def preset_data(self) -> dict[str, Any] | None:
        """A preset (as YAML data) that trains what the plan describes."""
        if self.report is None:
            return None
        r = self.report.request
        method = r.methods[0] if len(r.methods) == 1 else (self.report.recommended or "lora")
        short = r.model.rstrip("/").split("/")[-1].lower()
        name = re.sub(r"[^a-z0-9._-]+", "-", f"{method}-{short}").strip("-.")[:64] or "plan"
        data_text = self._text("examples").strip()
        data_path = data_text if data_text and not looks_like_count(data_text) else ""
        targets: Any = r.lora_targets
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        training: dict[str, Any] = {
            "num_train_epochs": r.epochs,
            "per_device_train_batch_size": r.micro_batch,
            "gradient_accumulation_steps": r.grad_accum,
            "max_length": r.seq_len,
            "gradient_checkpointing": r.grad_ckpt,
            "optim": r.optimizer,
            "learning_rate": 1e-5 if method == "full" else 2e-4,
            "logging_steps": 10,
            "save_steps": 200,
        }
        training.update(_precision_arguments(r.precision))
        if r.attn in ATTN_IMPLEMENTATION:
            init = training.setdefault("model_init_kwargs", {})
            init["attn_implementation"] = ATTN_IMPLEMENTATION[r.attn]
        if r.liger:
            training["use_liger_kernel"] = True
        if r.max_steps is not None:
            training["max_steps"] = r.max_steps
        if r.trainer == "dpo" and r.precompute_ref:
            training["precompute_ref_log_probs"] = True
        data: dict[str, Any] = {
            "name": name,
            "description": f"{method} of {r.model}, from the planner",
            "model": r.model,
            "dataset": {"path": data_path or "path/to/train.jsonl"},
            "trainer": r.trainer,
            "method": method,
            "lora": {
                "r": r.lora_r,
                "alpha": r.lora_alpha,
                "dropout": r.lora_dropout,
                "target_modules": targets,
            },
            "quantization": {"double_quant": r.quant == "nf4-dq"},
            "training": training,
            "launch": {
                "num_gpus": r.num_gpus,
                "strategy": "single" if r.num_gpus == 1 else STRATEGY_TO_LAUNCH[r.strategy],
            },
        }
        if self.report.gpu is not None:
            data["gpu"] = self.report.gpu.name
        if r.price_usd_per_h is not None:
            data["price_usd_per_h"] = r.price_usd_per_h
        return data

    def action_use_plan(self) -> None:
        data = self.preset_data()
        if data is None:
            self.notify("no plan yet: fix the inputs first", severity="warning")
            return
        self.app.open_presets(initial=data)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()


def _precision_arguments(precision: str) -> dict[str, Any]:
    """TRL arguments that train in `precision`, as `request_from_preset` reads them back."""
    if precision == "bf16":
        return {"bf16": True}
    if precision == "fp16":
        return {"fp16": True, "model_init_kwargs": {"dtype": "float16"}}
    if precision == "bf16-mixed":
        return {"bf16": True, "model_init_kwargs": {"dtype": "float32"}}
    if precision == "fp16-mixed":
        return {"fp16": True, "model_init_kwargs": {"dtype": "float32"}}
    return {"model_init_kwargs": {"dtype": "float32"}}
