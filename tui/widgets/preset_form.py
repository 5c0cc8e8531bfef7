"""A form over the preset schema: one input per field, its docstring as help, its error inline.

The fields are read from `presets.schema.Preset` itself (nested models become sections), so a new
schema field shows up here without touching the app. Values are typed the way `--set` types
them (YAML), and validation is the schema's own, through `presets.validate`.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, TextArea

from presets import yaml_io

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class FieldSpec:
    path: str
    """Dotted path in the preset, e.g. `lora.r`."""
    kind: Literal["text", "number", "choice", "bool", "yaml", "modules", "lines"]
    choices: tuple[str, ...]
    optional: bool
    help: str
    default: Any = None
    """The schema default shown when a preset leaves the field out (None: no default)."""

    @property
    def widget_id(self) -> str:
        return "field-" + self.path.replace(".", "--").replace("_", "-")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) != len(get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # noqa: UP007 (built at run time)
    return annotation, False


def schema_fields(model: type[BaseModel], prefix: str = "") -> list[FieldSpec]:
    """Every editable field of `model`, nested models flattened to dotted paths."""
    out: list[FieldSpec] = []
    hints = typing.get_type_hints(model)
    for name, info in model.model_fields.items():
        annotation, optional = _strip_optional(hints.get(name, info.annotation))
        path = f"{prefix}{name}"
        help_text = " ".join((info.description or "").split())
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(schema_fields(annotation, path + "."))
            continue
        origin = get_origin(annotation)
        if origin is Literal:
            choices = tuple(str(a) for a in get_args(annotation))
            out.append(FieldSpec(path, "choice", choices, optional, help_text, default))
        elif annotation is bool:
            out.append(FieldSpec(path, "bool", ("true", "false"), optional, help_text, default))
        elif annotation in (int, float):
            out.append(FieldSpec(path, "number", (), optional, help_text, default))
        elif origin is dict or annotation is dict:
            out.append(FieldSpec(path, "yaml", (), optional, help_text, default))
        elif origin is list:
            out.append(FieldSpec(path, "lines", (), optional, help_text, default))
        elif origin in (Union, types.UnionType) and any(
            get_origin(a) is list for a in get_args(annotation)
        ):
            out.append(FieldSpec(path, "modules", (), optional, help_text, default))
        else:
            out.append(FieldSpec(path, "text", (), optional, help_text, default))
    return out


def _get(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def to_text(spec: FieldSpec, value: Any) -> str:
    """A preset value as the text its input shows."""
    if value is None:
        return ""
    if spec.kind == "yaml":
        return yaml_io.dump(value, width=80) if value else ""
    if spec.kind == "modules":
        return value if isinstance(value, str) else ", ".join(value)
    if spec.kind == "lines":
        return "\n".join(str(v) for v in value)
    if spec.kind == "bool":
        return "true" if value else "false"
    return str(value)


def from_text(spec: FieldSpec, text: str) -> tuple[bool, Any]:
    """(present, value) from an input's text; empty optional fields are left out."""
    stripped = text.strip()
    if spec.kind == "lines":
        # One item a line: URLs may hold commas, so no separator but the line break.
        return True, [line.strip() for line in stripped.splitlines() if line.strip()]
    if not stripped:
        if spec.kind == "yaml":
            return True, {}
        return (False, None) if spec.optional or spec.kind != "text" else (True, "")
    if spec.kind == "text" or spec.kind == "choice":
        return True, stripped
    if spec.kind == "bool":
        return True, stripped == "true"
    if spec.kind == "modules":
        if stripped == ALL_LINEAR:
            return True, ALL_LINEAR
        return True, [m.strip() for m in stripped.strip("[]").split(",") if m.strip()]
    try:
        # Numbers and the training mapping are typed as YAML, as with `--set`.
        return True, yaml_io.load(stripped)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        return True, _YamlProblem(f"{where}not valid YAML ({getattr(exc, 'problem', exc)})")


@dataclass(frozen=True)
class _YamlProblem:
    message: str


class PresetForm(VerticalScroll):
    """Inputs for every preset field, grouped by section."""

    class Changed(Message):
        """A field was edited."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        from presets.schema import Preset

        self.specs = schema_fields(Preset)

    def compose(self) -> ComposeResult:
        section = ""
        for spec in self.specs:
            head = spec.path.split(".")[0] if "." in spec.path else ""
            if head and head != section:
                yield Static(Text(head, style="bold underline"), classes="form-section")
            section = head
            with Vertical(classes="form-field"):
                with Horizontal(classes="form-row"):
                    yield Label(spec.path.rsplit(".", 1)[-1], classes="form-label")
                    yield self._input(spec)
                yield Static(Text(spec.help), classes="form-help")
                yield Static("", id=spec.widget_id + "-error", classes="form-error")

    def _input(self, spec: FieldSpec) -> Select[str] | TextArea | Input:
        if spec.kind in ("choice", "bool"):
            options = [(c, c) for c in spec.choices]
            return Select(options, id=spec.widget_id, allow_blank=True, prompt="(not set)")
        if spec.kind in ("yaml", "lines"):
            area = TextArea(id=spec.widget_id, classes="form-yaml", tab_behavior="indent")
            area.show_line_numbers = False
            return area
        placeholder = "(not set)" if spec.optional else ""
        if spec.kind == "modules":
            placeholder = "all-linear, or q_proj, v_proj, ..."
        return Input(id=spec.widget_id, placeholder=placeholder)

    def load(self, data: dict[str, Any]) -> None:
        """Fill every input from a preset's data (a dict as in the YAML)."""
        # The inputs' Changed events that filling them causes reach the screen like a user's
        # edits; its debounce folds them into one validation. (Ignoring them until the next
        # refresh lost an edit made before that refresh came.)
        for spec in self.specs:
            value = _get(data, spec.path)
            if value is None:
                value = spec.default
            widget = self.query_one(f"#{spec.widget_id}")
            text = to_text(spec, value)
            if isinstance(widget, Select):
                widget.value = text if text in spec.choices else Select.BLANK
            elif isinstance(widget, TextArea):
                widget.text = text
            elif isinstance(widget, Input):
                widget.value = text

    def values(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The preset data the inputs hold, and the fields whose text could not be read."""
        data: dict[str, Any] = {}
        unreadable: dict[str, str] = {}
        for spec in self.specs:
            widget = self.query_one(f"#{spec.widget_id}")
            if isinstance(widget, Select):
                text = "" if widget.value is Select.BLANK else str(widget.value)
            elif isinstance(widget, TextArea):
                text = widget.text
            else:
                assert isinstance(widget, Input)
                text = widget.value
            present, value = from_text(spec, text)
            if isinstance(value, _YamlProblem):
                unreadable[spec.path] = value.message
                continue
            if present:
                _set(data, spec.path, value)
        return data, unreadable

    def show_errors(self, errors: dict[str, list[str]]) -> None:
        """Put each message under its field; clear the others."""
        for spec in self.specs:
            box = self.query_one(f"#{spec.widget_id}-error", Static)
            messages = errors.get(spec.path, [])
            box.update(Text("\n".join(messages), style="bold red") if messages else "")
            box.display = bool(messages)
            box.parent.set_class(bool(messages), "invalid")  # type: ignore[union-attr]

    def field_for(self, path: str) -> str | None:
        """The form field an error path belongs to (`training.foo` -> `training`)."""
        paths = {s.path for s in self.specs}
        probe = path
        while probe:
            if probe in paths:
                return probe
            probe = probe.rpartition(".")[0]
        return None

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed())

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(self.Changed())

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self.post_message(self.Changed())
