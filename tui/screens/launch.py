"""Launch: pick a preset, read the preflight (plan fit, data check), start the run detached.

The run is a separate process in its own session: closing the app, or the SSH connection,
never stops it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from tui.widgets.format import shown_path


def preflight_text(preset: Any, pf: Any) -> Text:
    """The preflight as words: problems refuse the launch, warnings do not."""
    out = Text()
    out.append(f"{preset.name}", "bold")
    out.append(f"  {preset.trainer} · {preset.method} · {shown_path(preset.model)}\n")
    steps = preset.training.get("max_steps")
    epochs = preset.training.get("num_train_epochs")
    length = f"{steps} steps" if steps else f"{epochs or 1} epoch(s)"
    out.append(f"{length} · {preset.launch.num_gpus} GPU(s), {preset.launch.strategy}\n\n")
    out.append("fit   ", "bold")
    fit = pf.fit_check or "not checked"
    style = {"fits": "green", "does not fit": "bold red"}.get(fit, "yellow")
    out.append(fit, style)
    if pf.planned_device_peak_gib is not None:
        out.append(f" · plan {pf.planned_device_peak_gib:.1f} GiB per GPU")
    out.append("\n")
    if pf.fit_problem:
        out.append("      " + pf.fit_problem + "\n", "red")
    out.append("data  ", "bold")
    data = pf.data
    if data is None:
        out.append("not checked (a hub dataset, or no file)\n", "yellow")
    else:
        verdict_style = {"ok": "green", "warnings": "yellow", "errors": "bold red"}
        out.append(f"{data.verdict}", verdict_style.get(data.verdict, ""))
        out.append(f" · {data.rows_text()} · {data.format}\n")
        for line in data.summary_lines()[:6]:
            out.append(f"      {line}\n", "dim")
    if pf.problems:
        out.append("\n")
        for line in pf.problems:
            out.append("problem: ", "bold red")
            out.append(line + "\n")
    if pf.warnings:
        out.append("\n")
        for line in pf.warnings[:8]:
            out.append("warning: ", "bold yellow")
            out.append(line + "\n")
    out.append("\n")
    if pf.problems:
        out.append("fix the problems above; nothing can be launched yet", "bold red")
    elif pf.fit_problem:
        out.append("ctrl+f launches anyway (it will probably run out of memory)", "yellow")
    else:
        out.append("ready · enter launches", "bold green")
    return out


class LaunchScreen(Screen[None]):
    """Preflight and launch."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+l,enter", "launch", "launch", priority=True),
        Binding("ctrl+f", "launch(True)", "launch anyway", show=False, priority=True),
        Binding("escape", "back", "back"),
    ]

    class Listed(Message):
        def __init__(self, entries: list[Any]) -> None:
            super().__init__()
            self.entries = entries

    class Progress(Message):
        """What the preflight is doing for `preset` (building the demo files, say)."""

        def __init__(self, preset: Any, doing: str) -> None:
            super().__init__()
            self.preset = preset
            self.doing = doing

    class Checked(Message):
        def __init__(self, preset: Any, preflight: Any) -> None:
            super().__init__()
            self.preset = preset
            self.preflight = preflight

    class Launched(Message):
        def __init__(self, result: Any | None, error: list[str] | None) -> None:
            super().__init__()
            self.result = result
            self.error = error

    def __init__(self, preset: Any | None = None) -> None:
        super().__init__()
        self.preset = preset
        self.preflight: Any | None = None
        self.entries: dict[str, Any] = {}
        self.launching = False

    def compose(self) -> ComposeResult:
        yield Static(Text("new run"), id="launch-title", classes="title-bar")
        with Horizontal(id="launch-body"):
            presets = OptionList(id="launch-presets")
            presets.border_title = "preset"
            yield presets
            with Vertical(id="launch-right"):
                with Horizontal(id="launch-name-row"):
                    yield Static("run name", id="launch-name-label")
                    yield Input(placeholder="(preset name and time)", id="launch-name")
                with VerticalScroll(id="launch-preflight-box") as box:
                    box.border_title = "preflight"
                    yield Static(Text("pick a preset", "dim"), id="launch-preflight")
        yield Footer()

    def on_mount(self) -> None:
        self.load_list()
        if self.preset is not None:
            self._check(self.preset)

    @work(thread=True, exclusive=True, group="launch-list", exit_on_error=False)
    def load_list(self) -> None:
        from presets import list_presets

        self.post_message(self.Listed(list_presets()))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        options = self.query_one("#launch-presets", OptionList)
        options.clear_options()
        self.entries = {e.name: e for e in message.entries if e.preset is not None}
        for name in self.entries:
            options.add_option(Option(Text(name, no_wrap=True, overflow="ellipsis"), id=name))
        if self.preset is None and self.entries:
            self.preset = self.entries.get("demo", next(iter(self.entries.values()))).preset
            self._check(self.preset)
        current = self.preset.name if self.preset is not None else None
        if current in self.entries:
            options.highlighted = options.get_option_index(current)
        options.focus()

    @on(OptionList.OptionHighlighted, "#launch-presets")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        if name is None or name not in self.entries:
            return
        if self.preset is not None and self.preset.name == name:
            return
        self.preset = self.entries[name].preset
        self._check(self.preset)

    def _check(self, preset: Any) -> None:
        self.preflight = None
        self.query_one("#launch-preflight", Static).update(
            Text(f"checking {preset.name}: model, data, TRL arguments and fit…", "dim")
        )
        self.query_one("#launch-title", Static).update(Text(f"new run ─ {preset.name}"))
        self._run_preflight(preset)

    @work(thread=True, exclusive=True, group="preflight", exit_on_error=False)
    def _run_preflight(self, preset: Any) -> None:
        from runner.demo import DemoError, build_demo_process, demo_ready, uses_demo
        from runner.launch import Preflight

        store = self.app.store  # type: ignore[attr-defined]
        if store is None:
            return
        if uses_demo(preset) and not demo_ready():
            # The demo's files are made here, with no download: build them rather than refuse.
            doing = "building the demo model and data (once, nothing downloaded)"
            self.post_message(self.Progress(preset, doing))
            try:
                build_demo_process(
                    lambda step: self.post_message(self.Progress(preset, f"{doing}: {step}"))
                )
            except DemoError as exc:
                self.post_message(self.Checked(preset, Preflight(problems=exc.lines)))
                return
        self.post_message(self.Checked(preset, store.preflight(preset)))

    @on(Progress)
    def _progress(self, message: Progress) -> None:
        if self.preset is not None and message.preset.name == self.preset.name:
            self.query_one("#launch-preflight", Static).update(Text(f"{message.doing}…", "dim"))

    @on(Checked)
    def _checked(self, message: Checked) -> None:
        if self.preset is None or message.preset.name != self.preset.name:
            return  # an answer for a preset no longer selected
        self.preflight = message.preflight
        self.query_one("#launch-preflight", Static).update(
            preflight_text(message.preset, message.preflight)
        )

    # ------------------------------------------------------------------ launching

    def action_launch(self, force: bool = False) -> None:
        if self.launching:
            return
        if self.preset is None or self.preflight is None:
            self.notify("wait for the preflight to finish", severity="warning")
            return
        if self.preflight.problems:
            self.notify("fix the problems first", severity="error")
            return
        if self.preflight.fit_problem and not force:
            self.notify("the plan does not fit this GPU; ctrl+f launches anyway", severity="error")
            return
        self.launching = True
        name = self.query_one("#launch-name", Input).value.strip() or None
        self.query_one("#launch-preflight", Static).update(
            Text(f"launching {self.preset.name}…", "bold")
        )
        self._launch(self.preset, name, force)

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def _launch(self, preset: Any, name: str | None, force: bool) -> None:
        from runner.runs import RunError

        store = self.app.store  # type: ignore[attr-defined]
        try:
            result = store.launch(preset, name=name, force=force)
        except RunError as exc:
            self.post_message(self.Launched(None, exc.lines))
            return
        self.post_message(self.Launched(result, None))

    @on(Launched)
    def _launched(self, message: Launched) -> None:
        self.launching = False
        if message.error:
            text = Text()
            for line in message.error:
                text.append("problem: ", "bold red")
                text.append(line + "\n")
            self.query_one("#launch-preflight", Static).update(text)
            return
        result = message.result
        for warning in result.warnings:
            self.notify(warning, severity="warning", markup=False)
        self.notify(f"launched {result.run_id}", markup=False)
        self.app.pop_screen()
        self.app.open_monitor(result.run_id)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()
