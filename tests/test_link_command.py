"""tools/link_command.py, run as `make` runs it after the set-up, in a fake home: it links
`tunedeck` into ~/.local/bin when that is on PATH, says how otherwise, and replaces nothing of
the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "link_command.py"


def checkout(tmp_path: Path, name: str = "clone") -> Path:
    command = tmp_path / name / ".venv" / "bin" / "tunedeck"
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\necho tunedeck\n")
    command.chmod(0o755)
    return command


def run(command: Path, home: Path, path: list[Path]) -> str:
    env = {"HOME": str(home), "PATH": os.pathsep.join(str(p) for p in path)}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(command)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_links_into_local_bin_when_it_is_on_path(tmp_path: Path) -> None:
    command = checkout(tmp_path)
    home = tmp_path / "home"
    local_bin = home / ".local" / "bin"  # on PATH but not made yet, as on a fresh box
    said = run(command, home, [local_bin, Path("/usr/bin")])
    link = local_bin / "tunedeck"
    assert link.is_symlink() and link.resolve() == command.resolve()
    assert f"linked {link} -> {command}" in said
    # Again: nothing to do, and it says so.
    again = run(command, home, [local_bin])
    assert f"tunedeck is ready: `tunedeck` on your PATH ({link}) runs {command}" in again
    assert link.resolve() == command.resolve()


def test_says_where_it_is_and_how_to_reach_it_when_local_bin_is_not_on_path(
    tmp_path: Path,
) -> None:
    command = checkout(tmp_path)
    home = tmp_path / "home"
    said = run(command, home, [Path("/usr/bin")])
    assert not (home / ".local" / "bin").exists()  # nothing made outside PATH
    assert f"tunedeck is installed at {command}" in said
    assert f"ln -s {command} ~/.local/bin/tunedeck" in said
    assert 'export PATH="$HOME/.local/bin:$PATH"' in said


def test_never_replaces_what_the_user_has(tmp_path: Path) -> None:
    command = checkout(tmp_path)
    home = tmp_path / "home"
    local_bin = home / ".local" / "bin"
    local_bin.mkdir(parents=True)
    theirs = local_bin / "tunedeck"
    theirs.write_text("#!/bin/sh\necho my own script\n")
    said = run(command, home, [local_bin])
    assert theirs.read_text() == "#!/bin/sh\necho my own script\n"
    assert "already exists and is not this checkout's command: left alone" in said
    assert f"this checkout's command is {command}" in said

    # A link to another checkout that still exists stays; one whose target is gone is replaced.
    theirs.unlink()
    other = checkout(tmp_path, "other-clone")
    theirs.symlink_to(other)
    run(command, home, [local_bin])
    assert theirs.resolve() == other.resolve()
    theirs.unlink()
    theirs.symlink_to(tmp_path / "deleted-clone" / ".venv" / "bin" / "tunedeck")
    run(command, home, [local_bin])
    assert theirs.resolve() == command.resolve()


def test_a_command_already_on_path_is_left_as_it_is(tmp_path: Path) -> None:
    command = checkout(tmp_path)
    home = tmp_path / "home"
    said = run(command, home, [command.parent, home / ".local" / "bin"])
    assert f"`tunedeck` on your PATH ({command}) runs {command}" in said
    assert not (home / ".local" / "bin" / "tunedeck").exists()
