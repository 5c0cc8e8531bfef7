"""After `make` sets up .venv: make `tunedeck` a command the user can type, or say how.

When `~/.local/bin` is on PATH (and is the user's own, or can be made), a link to
`.venv/bin/tunedeck` goes there. Nothing the user put there is replaced: an existing
`~/.local/bin/tunedeck` that is not a link to a tunedeck command is left alone, and so is a
working link to another checkout. Otherwise it prints where the command is and the two lines that
put it on PATH. Standard library only.

    python3 tools/link_command.py .venv/bin/tunedeck
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _on_path(folder: Path) -> bool:
    entries = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return any(_same(entry, folder) or entry == folder for entry in entries)


def _owned(folder: Path) -> bool:
    """Whether `folder` is the user's (created if missing, as its parent is the user's)."""
    if not folder.exists():
        try:
            folder.mkdir(parents=True)
        except OSError:
            return False
    try:
        return folder.stat().st_uid == os.getuid() and os.access(folder, os.W_OK)
    except OSError:
        return False


def _how_to(command: Path, bin_dir: Path) -> list[str]:
    home = Path.home()
    under_home = bin_dir.is_relative_to(home)
    shown = f"~/{bin_dir.relative_to(home)}" if under_home else str(bin_dir)
    # A `~` inside double quotes stays a `~`: PATH needs $HOME.
    on_path = f"$HOME/{bin_dir.relative_to(home)}" if under_home else str(bin_dir)
    return [
        f"tunedeck is installed at {command}",
        f"to type `tunedeck` anywhere, link it into a folder on your PATH, e.g. {shown}:",
        f"  mkdir -p {shown} && ln -s {command} {shown}/tunedeck",
        f'  export PATH="{on_path}:$PATH"   # add this line to ~/.bashrc or ~/.profile',
        f"or run it as {command}",
    ]


def link(command: Path, bin_dir: Path) -> list[str]:
    """Link `command` into `bin_dir` when that is possible and harmless; the lines to print."""
    command = command.absolute()
    if not command.is_file():
        return [f"{command} is missing: the set-up did not finish"]
    found = shutil.which("tunedeck")
    if found and _same(Path(found), command):
        return [f"tunedeck is ready: `tunedeck` on your PATH ({found}) runs {command}"]
    if not _on_path(bin_dir) or not _owned(bin_dir):
        return _how_to(command, bin_dir)
    target = bin_dir / "tunedeck"
    if target.is_symlink() and not target.exists():
        target.unlink()  # a link left by a checkout that is gone
    if target.exists() or target.is_symlink():
        if _same(target, command):
            lines = [f"tunedeck is ready: {target} links to {command}"]
        else:
            lines = [
                f"{target} already exists and is not this checkout's command: left alone",
                f"this checkout's command is {command}",
            ]
    else:
        target.symlink_to(command)
        lines = [f"tunedeck is ready: linked {target} -> {command}"]
    found = shutil.which("tunedeck")
    if found and not _same(Path(found), command):
        lines.append(f"note: `tunedeck` on your PATH is {found}, found before {bin_dir}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", help="the command to link, e.g. .venv/bin/tunedeck")
    parser.add_argument(
        "--bin-dir", default=str(Path.home() / ".local" / "bin"), help="where to link it"
    )
    args = parser.parse_args(argv)
    for line in link(Path(args.command), Path(args.bin_dir).expanduser()):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
