"""Load, override, validate and save presets.

Shipped presets are package data (`presets/builtin/*.yaml`) and are never written to; user presets
are YAML files in `locations.user_presets_dir()` and shadow a shipped preset of the same name.
Every problem becomes a `PresetError` whose lines name the file, the field path and what is
allowed, e.g. `presets/x.yaml: lora.r: must be a positive integer, got 0`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from presets import locations, yaml_io
from presets.schema import Preset

# A preset is a few kilobytes; anything this large is not one (and is not read into memory).
MAX_PRESET_BYTES = 1024 * 1024


class PresetError(Exception):
    """A preset that cannot be used; `lines` are the messages, one problem each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class PresetEntry:
    """One preset file found on disk; `preset` is None when it does not validate."""

    name: str
    source: Literal["shipped", "user"]
    path: Path
    preset: Preset | None
    error: PresetError | None


def builtin_dir() -> Path:
    """The folder of shipped presets inside the installed package."""
    return Path(str(files("presets").joinpath("builtin")))


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- --set key=value overrides


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """Turn `["training.max_steps=40", "lora.r=32"]` into a nested dict, each value read as
    YAML 1.2 (so `40` is an int, `2e-5` a float, `true` a bool, `[q_proj, v_proj]` a list;
    `yes` and `on` stay strings), as preset files are; see `presets.yaml_io`."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise PresetError(
                [f"--set {item!r}: expected key=value with a dotted key, e.g. lora.r=32"]
            )
        try:
            value = yaml_io.load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise PresetError([f"--set {item!r}: the value is not valid YAML ({exc})"]) from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PresetError([f"--set {item!r}: {part} is set to a value and a mapping"])
            node = child
        node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in; mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            # `training` is TRL's free-form mapping: merge it too, key by key.
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------- validation messages


def _field_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc[:-1]`, for listing allowed keys."""
    model: type[BaseModel] = Preset
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _describe_error(err: Mapping[str, Any]) -> list[tuple[str, str]]:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "training_arguments":
        return [(f"training.{key}", msg) for key, msg in ctx["problems"]]
    if kind == "field_problems":
        return [(str(key), str(msg)) for key, msg in ctx["problems"]]
    if kind == "extra_forbidden":
        owner = _field_model(loc)
        allowed = ", ".join(owner.model_fields) if owner else ""
        return [(path, f"unknown field; allowed here: {allowed}")]
    if kind == "missing":
        owner = _field_model(loc)
        field = owner.model_fields.get(str(loc[-1])) if owner else None
        doc = (field.description or "").split("\n")[0] if field else ""
        return [(path, f"required{': ' + doc if doc else ''}")]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }
        limit = next(iter(ctx.values()))
        if kind == "greater_than" and limit == 0 and isinstance(value, int):
            return [(path, f"must be a positive integer, got {value!r}")]
        return [(path, f"must be {words[kind]} {limit}, got {value!r}")]
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return [(path, f"must be an integer, got {value!r}")]
    if kind == "finite_number":
        return [(path, f"must be a finite number, got {value!r}")]
    if kind in ("float_parsing", "float_type"):
        return [(path, f"must be a number, got {value!r}")]
    if kind in ("bool_parsing", "bool_type"):
        return [(path, f"must be true or false, got {value!r}")]
    if kind in ("string_type",):
        return [(path, f"must be a string, got {value!r}")]
    if kind == "string_too_short":
        return [(path, f"must not be empty, got {value!r}")]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [(path, f"must be a mapping of fields, got {value!r}")]
    if kind == "literal_error":
        return [
            (path, f"must be {ctx.get('expected', 'one of the allowed values')}, got {value!r}")
        ]
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return [(path, f"{message[0].lower()}{message[1:]}" if message else "invalid")]


def format_validation_error(exc: ValidationError, where: str) -> PresetError:
    """One line per problem: `where: field.path: what is wrong and what is allowed`."""
    lines: list[str] = []
    seen: set[str] = set()
    # A union (list or "all-linear") reports each branch; the first is enough per field.
    for err in exc.errors():
        for path, message in _describe_error(err):
            clean = path.replace(".list[str]", "").replace(".literal['all-linear']", "")
            if clean in seen:
                continue
            seen.add(clean)
            lines.append(f"{where}: {clean}: {message}")
    return PresetError(lines)


def validate(data: Any, where: str) -> Preset:
    """A `Preset` from plain data, or a PresetError naming `where` and each bad field."""
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise PresetError([f"{where}: a preset must be a YAML mapping of fields, got {kind}"])
    try:
        return Preset.model_validate(dict(data))
    except ValidationError as exc:
        raise format_validation_error(exc, where) from None


# ---------------------------------------------------------------- files


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning every read or syntax problem into a PresetError."""
    where = _display(path)
    try:
        size_bytes = path.stat().st_size
        if size_bytes > MAX_PRESET_BYTES:
            raise PresetError(
                [
                    f"{where}: {size_bytes / 1024**2:,.1f} MiB is far too large for a preset "
                    f"(at most {MAX_PRESET_BYTES // 1024**2} MiB); is it really one?"
                ]
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PresetError([f"{where}: no such file"]) from None
    except UnicodeDecodeError:
        raise PresetError([f"{where}: not UTF-8 text; is it really a YAML preset?"]) from None
    except OSError as exc:
        raise PresetError([f"{where}: cannot read ({exc.strerror})"]) from None
    try:
        return yaml_io.load(text)
    except yaml_io.YamlTooLarge as exc:
        mark = exc.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise PresetError([f"{where}: {at}{exc.problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PresetError([f"{where}: {at}not valid YAML ({problem})"]) from None


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def list_presets() -> list[PresetEntry]:
    """Every shipped and user preset, user ones shadowing shipped ones of the same name,
    sorted by name. Broken files are listed with their error, not skipped."""
    found: dict[str, PresetEntry] = {}
    for source, folder in (("shipped", builtin_dir()), ("user", locations.user_presets_dir())):
        for path in _yaml_files(folder):
            name = path.stem
            try:
                preset = validate(read_yaml(path), _display(path))
                found[name] = PresetEntry(name, source, path, preset, None)  # type: ignore[arg-type]
            except PresetError as exc:
                found[name] = PresetEntry(name, source, path, None, exc)  # type: ignore[arg-type]
    return [found[k] for k in sorted(found)]


def find_preset_path(name_or_path: str) -> Path:
    """The file for a preset name (user first, then shipped) or an explicit YAML path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise PresetError([f"{name_or_path}: no such preset file"])
    for folder in (locations.user_presets_dir(), builtin_dir()):
        for suffix in (".yaml", ".yml"):
            path = folder / f"{name_or_path}{suffix}"
            if path.is_file():
                return path
    known = ", ".join(e.name for e in list_presets()) or "none"
    raise PresetError([f"{name_or_path}: no such preset; known presets: {known}"])


def load_preset(name_or_path: str, overrides: Iterable[str] = ()) -> Preset:
    """Load a preset by name or path and apply `--set key=value` overrides."""
    path = find_preset_path(name_or_path)
    data = read_yaml(path)
    where = _display(path)
    extra = parse_set(overrides)
    if extra:
        if not isinstance(data, Mapping):
            return validate(data, where)
        data = deep_merge(data, extra)
        where = f"{where} (with --set {' '.join(overrides)})"
    return validate(data, where)


def preset_to_yaml(preset: Preset) -> str:
    """The preset as YAML, fields in schema order, defaults included (the resolved view)."""
    return yaml_io.dump(preset.model_dump(mode="json"))


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` so that a reader sees the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_user_preset(preset: Preset, overwrite: bool = False) -> Path:
    """Save as `<user presets dir>/<name>.yaml`. A name taken by a shipped preset or an existing
    user preset is refused unless `overwrite` (which still never touches a shipped file)."""
    target = locations.user_presets_dir() / f"{preset.name}.yaml"
    if (builtin_dir() / f"{preset.name}.yaml").exists():
        raise PresetError(
            [
                f"{preset.name}: a shipped preset has this name; shipped presets are never "
                "overwritten, choose another name"
            ]
        )
    if target.exists() and not overwrite:
        raise PresetError([f"{_display(target)}: already exists; choose another name"])
    write_atomic(target, preset_to_yaml(preset))
    return target


def derive_preset(name: str, base: str, overrides: Iterable[str] = ()) -> Preset:
    """A new preset named `name`: `base` with the overrides applied, validated."""
    path = find_preset_path(base)
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        return validate(data, _display(path))
    merged = deep_merge(data, parse_set(overrides))
    merged["name"] = name
    return validate(
        merged, f"{name} (from {base}{' with --set ' + ' '.join(overrides) if overrides else ''})"
    )
