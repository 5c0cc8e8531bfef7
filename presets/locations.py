"""Where tunedeck keeps its files.

By default the XDG locations platformdirs gives (user presets in the config dir, runs in the data
dir). `TUNEDECK_HOME` moves every folder under one root (tests use it); `TUNEDECK_RUNS` moves only
the runs root, e.g. onto the persistent volume of a rented box.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "tunedeck"


def home() -> Path | None:
    """The single root set by `TUNEDECK_HOME`, or None for the XDG locations."""
    value = os.environ.get("TUNEDECK_HOME")
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """Folder of user settings; user presets live in its `presets/`."""
    root = home()
    return root / "config" if root else Path(platformdirs.user_config_dir(APP))


def user_presets_dir() -> Path:
    """Folder of the user's own preset YAML files."""
    return config_dir() / "presets"


def data_dir() -> Path:
    """Folder of tunedeck's data: the demo model and dataset, and by default the runs."""
    root = home()
    return root / "data" if root else Path(platformdirs.user_data_dir(APP))


def runs_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The runs root: `override` (the `--runs-dir` flag), else `TUNEDECK_RUNS`, else
    `$TUNEDECK_HOME/runs`, else `<user data dir>/runs`."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("TUNEDECK_RUNS")
    if env:
        return Path(env).expanduser()
    root = home()
    return root / "runs" if root else data_dir() / "runs"


def cache_dir() -> Path:
    """Folder of rebuildable files."""
    root = home()
    return root / "cache" if root else Path(platformdirs.user_cache_dir(APP))


def expand(value: str) -> str:
    """Resolve the placeholders a preset may use in paths: `~` and `{data_dir}` (tunedeck's data
    folder, where `tunedeck demo` puts its model and dataset). Hub ids pass through unchanged."""
    if "{data_dir}" in value:
        value = value.replace("{data_dir}", str(data_dir()))
    if value.startswith("~"):
        value = str(Path(value).expanduser())
    return value
