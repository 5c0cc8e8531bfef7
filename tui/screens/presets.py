"""Preset editor: shipped and user presets, a form with help and inline errors, save as a user
preset (shipped files are never written), and the resolved YAML."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from tui.widgets.preset_form import PresetForm

VALIDATE_DELAY_S = 0.15


def split_error(line: str, form: PresetForm) -> tuple[str | None, str]:
    """`where: lora.r: must be ...` -> ("lora.r", "must be ..."); the field is None when the
    line names no form field."""
    parts = line.split(": ")
    for i in range(len(parts) - 1):
        field = form.field_for(parts[i].strip())
        if field is not None:
            return field, ": ".join(parts[i + 1 :]) if parts[i].strip() == field else line
    return None, line


class PresetsScreen(Screen[None]):
    """Browse, edit and save presets."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "save as user preset", priority=True),
        Binding("ctrl+y", "toggle_yaml", "resolved YAML", priority=True),
        Binding("ctrl+l", "launch", "launch…", priority=True),
        Binding("ctrl+p", "probe", "probe on this box", priority=True),
        Binding("escape", "back", "back"),
    ]

    class Listed(Message):
        def __init__(self, entries: list[Any]) -> None:
            super().__init__()
            self.entries = entries

    class Saved(Message):
        def __init__(self, path: str | None, error: list[str] | None) -> None:
            super().__init__()
            self.path = path
            self.error = error

    def __init__(self, initial: dict[str, Any] | None = None, select: str | None = None) -> None:
        super().__init__()
        self.initial = initial
        self.select = select
        self.entries: dict[str, Any] = {}
        self.preset: Any | None = None
        """The valid preset the form holds, None while it has errors."""
        self._validate_timer: Any = None

    def compose(self) -> ComposeResult:
        yield Static(Text("presets"), id="presets-title", classes="title-bar")
        with Horizontal(id="presets-body"):
            presets_list = OptionList(id="presets-list")
            presets_list.border_title = "presets"
            yield presets_list
            with Vertical(id="presets-right"):
                yield Static("", id="presets-status")
                yield PresetForm(id="preset-form")
                with VerticalScroll(id="preset-yaml-box") as box:
                    box.border_title = "resolved YAML"
                    yield Static("", id="preset-yaml")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#preset-yaml-box").display = False
        if self.initial is not None:
            self.query_one(PresetForm).load(self.initial)
            self._validate()
            self._focus_form()
        self.load_list()

    # ------------------------------------------------------------------ the list (worker)

    @work(thread=True, exclusive=True, group="presets-list", exit_on_error=False)
    def load_list(self) -> None:
        from presets import list_presets

        self.post_message(self.Listed(list_presets()))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        options = self.query_one("#presets-list", OptionList)
        options.clear_options()
        self.entries = {e.name: e for e in message.entries}
        for source in ("user", "shipped"):
            group = [e for e in message.entries if e.source == source]
            if not group:
                continue
            options.add_option(Option(Text(f"{source} presets", "bold"), disabled=True))
            for entry in group:
                label = Text(entry.name, no_wrap=True, overflow="ellipsis")
                if entry.preset is None:
                    label.append(" invalid", "bold red")
                options.add_option(Option(label, id=entry.name))
        wanted = self.select or (None if self.initial is not None else "demo")
        if wanted in self.entries:
            options.highlighted = options.get_option_index(wanted)
            if self.initial is None:
                self._open(wanted)
        if self.initial is None:
            options.focus()

    @on(OptionList.OptionSelected, "#presets-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self._open(event.option.id)
            self._focus_form()

    def _focus_form(self) -> None:
        first = self.query_one(PresetForm).query(Input).first()
        first.focus()

    def _open(self, name: str) -> None:
        entry = self.entries[name]
        from presets import PresetError
        from presets.store import read_yaml

        try:
            data = read_yaml(entry.path)
        except PresetError as exc:  # a file that vanished or broke since listing: say so
            self.notify("\n".join(exc.lines), severity="error", markup=False)
            return
        self.query_one(PresetForm).load(data if isinstance(data, dict) else {})
        self.query_one("#presets-title", Static).update(
            Text(f"presets ─ {name} ({entry.source}: {entry.path})")
        )
        self._validate()

    # ------------------------------------------------------------------ validation

    @on(PresetForm.Changed)
    def _changed(self) -> None:
        if self._validate_timer is not None:
            self._validate_timer.stop()
        self._validate_timer = self.set_timer(VALIDATE_DELAY_S, self._validate)

    def _validate(self) -> None:
        """Validate what the form holds with the schema; errors go under their fields."""
        from presets import PresetError, validate

        form = self.query_one(PresetForm)
        data, unreadable = form.values()
        errors: dict[str, list[str]] = {path: [msg] for path, msg in unreadable.items()}
        general: list[str] = []
        self.preset = None
        if not unreadable:
            try:
                self.preset = validate(data, data.get("name") or "preset")
            except PresetError as exc:
                for line in exc.lines:
                    field, message = split_error(line, form)
                    if field is None:
                        general.append(message)
                    else:
                        errors.setdefault(field, []).append(message)
        form.show_errors(errors)
        status = self.query_one("#presets-status", Static)
        count = sum(len(v) for v in errors.values()) + len(general)
        if count:
            text = Text(
                f"{count} problem{'s' if count != 1 else ''}: fix the fields in red", "bold red"
            )
            for line in general:
                text.append("\n" + line)
            status.update(text)
        else:
            status.update(Text("valid · ctrl+s saves it as a user preset", "green"))
        self._show_yaml()

    def _show_yaml(self) -> None:
        view = self.query_one("#preset-yaml", Static)
        if not self.query_one("#preset-yaml-box").display:
            return
        if self.preset is None:
            view.update(Text("(fix the problems to see the resolved preset)", "dim"))
            return
        from presets import preset_to_yaml

        view.update(Syntax(preset_to_yaml(self.preset), "yaml", theme="ansi_dark"))

    def action_toggle_yaml(self) -> None:
        box = self.query_one("#preset-yaml-box")
        box.display = not box.display
        self.query_one(PresetForm).display = not box.display
        self._show_yaml()

    # ------------------------------------------------------------------ saving

    def action_save(self) -> None:
        # Validate what is typed now; a validation still pending from the last keystroke would
        # otherwise fire after the save and write over its message.
        if self._validate_timer is not None:
            self._validate_timer.stop()
            self._validate_timer = None
        self._validate()
        if self.preset is None:
            self.notify("not saved: fix the problems first", severity="error")
            return
        self._save(self.preset)

    @work(thread=True, exclusive=True, group="presets-save", exit_on_error=False)
    def _save(self, preset: Any) -> None:
        from presets import PresetError, save_user_preset
        from presets.locations import user_presets_dir

        existing = user_presets_dir() / f"{preset.name}.yaml"
        try:
            # Editing a user preset writes it back; a shipped name is always refused.
            path = save_user_preset(preset, overwrite=existing.exists())
        except PresetError as exc:
            self.post_message(self.Saved(None, exc.lines))
            return
        except OSError as exc:
            self.post_message(self.Saved(None, [f"cannot write the preset: {exc}"]))
            return
        self.post_message(self.Saved(str(path), None))

    @on(Saved)
    def _saved(self, message: Saved) -> None:
        if message.error:
            self.notify("\n".join(message.error), severity="error", timeout=8, markup=False)
            self.query_one("#presets-status", Static).update(
                Text("not saved: " + "; ".join(message.error), "bold red")
            )
            return
        self.notify(f"saved {message.path}", markup=False)
        self.query_one("#presets-status", Static).update(Text(f"saved {message.path}", "green"))
        self.select = self.preset.name if self.preset is not None else None
        self.initial = {}  # keep the form as it is
        self.load_list()

    # ------------------------------------------------------------------ navigation

    def action_launch(self) -> None:
        if self.preset is None:
            self.notify("fix the problems before launching", severity="error")
            return
        self.app.open_launch(self.preset)  # type: ignore[attr-defined]

    def action_probe(self) -> None:
        if self.preset is None:
            self.notify("fix the problems before probing", severity="error")
            return
        from tui.screens.probe import ProbeScreen

        self.app.push_screen(ProbeScreen(self.preset))

    def action_back(self) -> None:
        self.app.pop_screen()
