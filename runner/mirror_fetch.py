"""`tunedeck resume --from URL/<run id>`: a run folder recreated from its mirror on a fresh box.

The small files come down first (config.yaml is required), then the newest mirrored checkpoint
whose manifest checks out: every file listed, each of the listed size, each file's sha256 equal
to the manifest's as it is streamed down, and the checkpoint complete by `runner.checkpoints`'
own header checks once it is here. A checkpoint that fails any of these (a transfer that was cut
off, a damaged object) is skipped for the next older one, with a warning. The run's lock is taken
as soon as its folder exists, before anything is written into it, as `tunedeck resume` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from runner import checkpoints as ckpt
from runner import run_lock
from runner.mirror import (
    CHUNK_BYTES,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    SMALL_FILES,
    MirrorError,
    display_url,
    open_url,
)
from runner.runs import (
    ACTIVE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    STATE_FILE,
    RunError,
    RunState,
    is_run_dir,
    parse_iso,
    process_alive,
    read_state_checked,
    recovered_state,
    write_state,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


class Damaged(Exception):
    """A mirrored checkpoint that does not match its manifest (or has none)."""


@dataclass
class Fetched:
    run_dir: Path
    lock_fd: int | None
    """The run's lock, held, when the folder was made here; None when it was here already."""
    warnings: list[str] = field(default_factory=list)


def mirrored_checkpoints(fs: AbstractFileSystem, run_root: str) -> list[tuple[int, str]]:
    """(step, remote folder) of every checkpoint folder on the mirror, newest first."""
    folder = f"{run_root}/{CHECKPOINTS_DIR}"
    fs.invalidate_cache(folder)
    try:
        paths = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    found = []
    for path in paths:
        name = posixpath.basename(str(path).rstrip("/"))
        match = ckpt.CHECKPOINT_RE.match(name)
        if match:
            found.append((int(match.group(1)), f"{folder}/{name}"))
    return sorted(found, reverse=True)


def read_manifest(fs: AbstractFileSystem, remote_dir: str, step: int) -> list[dict[str, Any]]:
    """The manifest's file entries, checked for shape and against the mirror's listing."""
    try:
        manifest = json.loads(fs.cat_file(f"{remote_dir}/{MANIFEST_FILE}"))
    except FileNotFoundError:
        raise Damaged("no manifest (its upload never finished)") from None
    except (UnicodeDecodeError, ValueError):
        raise Damaged("its manifest is not readable JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise Damaged("its manifest is of an unknown format")
    if manifest.get("step") != step:
        raise Damaged(f"its manifest is for step {manifest.get('step')}")
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        raise Damaged("its manifest lists no files")
    for entry in entries:
        rel = entry.get("path") if isinstance(entry, dict) else None
        ok = (
            isinstance(rel, str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        )
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if not ok or not parts or rel.startswith("/") or ".." in parts or "\\" in str(rel):
            raise Damaged("its manifest has a malformed entry")
    fs.invalidate_cache(remote_dir)
    listed = {
        str(path)[len(remote_dir) + 1 :]: info.get("size")
        for path, info in fs.find(remote_dir, detail=True).items()
    }
    for entry in entries:
        size = listed.get(entry["path"])
        if size is None:
            raise Damaged(f"{entry['path']} is missing")
        if size != entry["size"]:
            raise Damaged(f"{entry['path']} is {size} bytes, its manifest says {entry['size']}")
    return entries


def get_stream(fs: AbstractFileSystem, remote: str, local: Path) -> tuple[int, str]:
    """Copy one file down in `CHUNK_BYTES` pieces (owner-only, flushed to disk); returns its
    size and sha256."""
    digest = hashlib.sha256()
    size = 0
    with fs.open(remote, "rb", block_size=CHUNK_BYTES) as src:
        # Opened first: a file missing on the mirror leaves nothing here.
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as dst:
            while True:
                chunk = src.read(CHUNK_BYTES)
                if not chunk:
                    break
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    return size, digest.hexdigest()


def download_checkpoint(
    fs: AbstractFileSystem, remote_dir: str, step: int, checkpoints_dir: Path
) -> Path:
    """Bring one mirrored checkpoint down, verified; Damaged when it does not check out. It is
    assembled beside its final place and renamed into it only once whole."""
    entries = read_manifest(fs, remote_dir, step)
    name = posixpath.basename(remote_dir)
    staging = checkpoints_dir / f".fetching-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for entry in entries:
            size, digest = get_stream(fs, f"{remote_dir}/{entry['path']}", staging / entry["path"])
            if size != entry["size"] or digest != entry["sha256"]:
                raise Damaged(f"{entry['path']} does not match its sha256 in the manifest")
        target = checkpoints_dir / name
        os.replace(staging, target)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def newest_verified(
    fs: AbstractFileSystem, run_root: str, checkpoints_dir: Path, warnings: list[str]
) -> ckpt.CheckpointInfo | None:
    """Download the newest mirrored checkpoint that checks out (manifest, sizes, sha256, then
    the local header checks); the ones skipped go into `warnings`."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for step, remote_dir in mirrored_checkpoints(fs, run_root):
        try:
            path = download_checkpoint(fs, remote_dir, step, checkpoints_dir)
        except Damaged as exc:
            warnings.append(f"skipped checkpoint-{step} on the mirror: {exc}")
            continue
        info = ckpt.inspect_checkpoint(path)
        if info.complete:
            return info
        warnings.append(f"skipped checkpoint-{step} on the mirror: {', '.join(info.problems)}")
        shutil.rmtree(path, ignore_errors=True)
    return None


def _mirrored_state(fs: AbstractFileSystem, run_root: str) -> RunState | None:
    try:
        return RunState.model_validate_json(fs.cat_file(f"{run_root}/{STATE_FILE}"))
    except (FileNotFoundError, ValueError):
        return None  # the config and the checkpoints are enough to resume (recovered_state)


def _refuse_if_alive(state: RunState | None, url: str) -> None:
    if state is None:
        return
    if state.status == "completed":
        raise RunError(
            [
                f"{state.run_id} has completed; its final weights are in the newest checkpoint "
                f"under {url}/{CHECKPOINTS_DIR}/"
            ]
        )
    if state.status in ACTIVE and process_alive(state) is not False:
        beat = parse_iso(state.updated_at)
        ago = f" (its last word on the mirror {time.time() - beat:.0f} s ago)" if beat else ""
        raise RunError(
            [
                f"{state.run_id} may still be running on {state.host or 'another box'}{ago}; "
                "stop it there first, or add --force if that box is gone"
            ]
        )


def fetch_run(url: str, root: Path, force: bool = False) -> Fetched:
    """Recreate `<root>/<run id>` from the mirror at `url` (`<mirror>/<run id>`); a run folder of
    that id already here is left as it is (resume it from its own checkpoints). RunError when
    nothing can be fetched."""
    shown = display_url(url).rstrip("/")
    try:
        fs, run_root = open_url(url)
    except MirrorError as exc:
        raise RunError([str(exc)]) from None
    run_id = posixpath.basename(run_root)
    from presets.schema import NAME_PATTERN

    if not NAME_PATTERN.match(run_id):
        raise RunError([f"--from {shown}: end it with the run id, e.g. s3://bucket/runs/RUN_ID"])
    run_dir = root / run_id
    if is_run_dir(run_dir):
        return Fetched(run_dir, None, [f"{run_id} is here already ({run_dir}): resumed from it"])
    try:
        if not fs.exists(f"{run_root}/{CONFIG_FILE}"):
            raise RunError([f"{shown}: no tunedeck run there (no {CONFIG_FILE})"])
        state = _mirrored_state(fs, run_root)
    except RunError:
        raise
    except Exception as exc:  # each fsspec backend raises its own types (botocore's...)
        raise RunError([f"{shown}: cannot read the mirror ({type(exc).__name__}: {exc})"]) from None
    if not force:
        _refuse_if_alive(state, shown)
    try:
        run_dir.mkdir(mode=0o700)
    except FileExistsError:
        raise RunError([f"{run_dir} exists and is not a run folder; move it away"]) from None
    except OSError as exc:
        raise RunError([f"{run_dir}: cannot create it ({exc.strerror})"]) from None
    lock_fd: int | None = None
    try:
        lock_fd = run_lock.acquire(run_dir, retry_s=0)
        warnings = _fill(fs, run_root, run_dir)
    except BaseException as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        shutil.rmtree(run_dir, ignore_errors=True)  # made by this call a moment ago
        if isinstance(exc, Exception) and not isinstance(exc, RunError):
            # Each fsspec backend raises its own types; any of them ends the fetch cleanly.
            raise RunError(
                [f"{shown}: fetching failed ({type(exc).__name__}: {exc}); nothing was kept"]
            ) from None
        raise
    return Fetched(run_dir, lock_fd, warnings)


def _fill(fs: AbstractFileSystem, run_root: str, run_dir: Path) -> list[str]:
    warnings: list[str] = []
    for name in SMALL_FILES:
        with contextlib.suppress(FileNotFoundError):  # only config.yaml must be there
            get_stream(fs, f"{run_root}/{name}", run_dir / name)
    latest = newest_verified(fs, run_root, run_dir / CHECKPOINTS_DIR, warnings)
    if latest is None:
        warnings.append("no complete checkpoint on the mirror: the run starts again from step 0")
    state, problem = read_state_checked(run_dir)
    if state is None:
        state = recovered_state(run_dir, problem or "state.json is unreadable")
    if state.status in ACTIVE:
        # Its box is gone (checked before fetching): the run was interrupted there.
        state = state.model_copy(update={"status": "interrupted"})
    write_state(run_dir, state)
    return warnings
