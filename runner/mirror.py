"""The off-box mirror (`launch.mirror`): each complete checkpoint and the run's small files are
copied to `<mirror>/<run id>/` while the run trains, so that the run can be resumed on another
box (`tunedeck resume --from`, see `runner.mirror_fetch`) when this one and its disk are gone.

On the mirror (any fsspec file system: a local or mounted folder, S3, GCS, the HF hub):

    <mirror>/<run id>/config.yaml, state.json, metrics.jsonl, train.log, launch.json
    <mirror>/<run id>/checkpoints/checkpoint-N/...                  the checkpoint's files
    <mirror>/<run id>/checkpoints/checkpoint-N/.tunedeck-manifest.json

The manifest lists every file of the checkpoint with its size and sha256. It is written last,
after every file is up, and removed first when a checkpoint is uploaded again: a checkpoint
without one, or whose files disagree with it, is a transfer that was cut off and never counts.

Who uploads: a thread of the training process on rank 0 (`Mirror`). The trainer tells it the
moment a checkpoint is complete (after every rank has saved), so nothing polls for it; the
emergency checkpoint of a stop or a spot notice goes ahead of an older upload in flight; and the
process waits for that one a bounded time (`launch.mirror_wait_s`) before it exits. It dies with
the trainer, so no uploader outlives its run to write into a mirror that another box has resumed
from. Reading, hashing and the network release the GIL: a training step never waits on it.
Memory stays bounded: files are streamed in `CHUNK_BYTES` pieces, one checkpoint is in flight,
and when saves outrun uploads the ones in between are skipped (the newest complete checkpoint is
always the next to go).

Credentials come from where each backend looks for them (s3fs: the AWS_* variables and ~/.aws;
gcsfs: Google's application credentials; the hub: HF_TOKEN), and fsspec's own
`FSSPEC_<PROTOCOL>_<OPTION>` variables carry storage options; none reach the run folder or the
mirror.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from runner import checkpoints as ckpt
from runner.runs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    STATE_FILE,
    RunState,
    now_iso,
    parse_iso,
    read_state,
    update_state,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# Files are streamed in pieces this big (S3's multipart upload needs at least 5 MiB a part).
CHUNK_BYTES = 8 * 2**20
MANIFEST_FILE = ".tunedeck-manifest.json"
MANIFEST_FORMAT = 1
LAUNCH_FILE = "launch.json"
SMALL_FILES = (CONFIG_FILE, STATE_FILE, METRICS_FILE, LOG_FILE, LAUNCH_FILE)
# state.json goes up this often between checkpoints: the run's heartbeat as seen on the mirror.
STATE_SYNC_S = 60.0
# A failed final upload is tried again after this long, until `launch.mirror_wait_s` runs out.
RETRY_S = 5.0


class MirrorError(Exception):
    """The mirror cannot be used: an unknown URL scheme, a backend that is not installed."""


class Superseded(Exception):
    """An upload given up for a more urgent checkpoint (the emergency one of a stop)."""


# ---------------------------------------------------------------- URLs


def display_url(url: str) -> str:
    """The URL without any user name, password or query, fit to be shown and stored."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def run_url(mirror: str, run_id: str) -> str:
    """Where a run lives on a mirror, as shown: `<mirror>/<run id>`."""
    return display_url(mirror).rstrip("/") + "/" + run_id


def open_url(url: str) -> tuple[AbstractFileSystem, str]:
    """The file system and the path within it of a mirror URL or a local folder."""
    import fsspec

    from presets import locations

    text = url.strip()
    if "://" not in text:
        text = str(Path(locations.expand(text)).expanduser().absolute())
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as exc:
        # fsspec names the package to install for a known scheme, or says the scheme is unknown.
        raise MirrorError(f"mirror {display_url(url)}: {exc}") from None
    return fs, str(path).rstrip("/")


def check_url(url: str) -> str | None:
    """What keeps `url` from being used as a mirror on this box (checked before a launch:
    the scheme and its backend, no network), or None."""
    try:
        open_url(url)
    except MirrorError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- transfers


def put_stream(
    fs: AbstractFileSystem,
    local: Path,
    remote: str,
    should_abort: Callable[[], bool] | None = None,
) -> tuple[int, str]:
    """Copy one file up in `CHUNK_BYTES` pieces; returns its size and sha256 as read."""
    digest = hashlib.sha256()
    size = 0
    with local.open("rb") as src, fs.open(remote, "wb", block_size=CHUNK_BYTES) as dst:
        while True:
            if should_abort is not None and should_abort():
                raise Superseded(remote)
            chunk = src.read(CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


# Object stores have no folders to make, and their makedirs would create a missing bucket: a
# misspelt bucket name must fail, not make a new bucket.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "az", "adl", "hf", "oss", "r2"}


def _makedirs(fs: AbstractFileSystem, folders: set[str]) -> None:
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & OBJECT_STORES:
        return
    for folder in sorted(folders):
        fs.makedirs(folder, exist_ok=True)


def upload_checkpoint(
    fs: AbstractFileSystem,
    remote_dir: str,
    local_dir: Path,
    should_abort: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Upload a complete checkpoint folder, then its manifest; returns the manifest."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    manifest_path = f"{remote_dir}/{MANIFEST_FILE}"
    # Uploaded before (a resumed run saves the same step again): the old manifest must not
    # vouch for files about to be replaced.
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(manifest_path)
    rels = [p.relative_to(local_dir).as_posix() for p in files]
    _makedirs(fs, {posixpath.dirname(f"{remote_dir}/{rel}") for rel in rels})
    entries = []
    for path, rel in zip(files, rels, strict=True):
        size, digest = put_stream(fs, path, f"{remote_dir}/{rel}", should_abort)
        entries.append({"path": rel, "size": size, "sha256": digest})
    match = ckpt.CHECKPOINT_RE.match(local_dir.name)
    manifest = {
        "format": MANIFEST_FORMAT,
        "checkpoint": local_dir.name,
        "step": int(match.group(1)) if match else None,
        "files": entries,
        "written_at": now_iso(),
    }
    fs.pipe_file(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def upload_files(fs: AbstractFileSystem, remote_root: str, run_dir: Path, names: tuple[str, ...]):
    """Upload the run's small files that exist, each under a temporary name moved into place,
    so that a reader of the mirror sees a whole file or the previous one."""
    present = [name for name in names if (run_dir / name).is_file()]
    if present:
        _makedirs(fs, {remote_root})
    for name in present:
        part = f"{remote_root}/.{name}.part"
        try:
            put_stream(fs, run_dir / name, part)
        except FileNotFoundError:
            continue  # replaced or removed between the listing and the read: next time
        fs.mv(part, f"{remote_root}/{name}")


def manifest_matches(fs: AbstractFileSystem, remote_dir: str, local_dir: Path) -> bool:
    """Whether the mirror holds this checkpoint complete (a manifest whose files have the local
    files' sizes): a cheap check that needs no hashing."""
    try:
        manifest = json.loads(fs.cat_file(f"{remote_dir}/{MANIFEST_FILE}"))
        listed = {e["path"]: e["size"] for e in manifest["files"]}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return False
    local = {
        p.relative_to(local_dir).as_posix(): p.stat().st_size
        for p in local_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    }
    return bool(local) and listed == local


# ---------------------------------------------------------------- the uploader


class Mirror:
    """The uploader thread of one training segment (rank 0). `checkpoint_saved` wakes it after
    each save; `finish` lets it catch up, for a bounded time, before the process exits. Its
    findings go into state.json (`mirror_*`), of which it is the only writer."""

    def __init__(self, run_dir: Path, url: str, say: Callable[[str], None]):
        self.run_dir = run_dir
        self.url = run_url(url, run_dir.name)
        fs, base = open_url(url)
        self.fs = fs
        self.root = f"{base}/{run_dir.name}"
        self._say = say
        state = read_state(run_dir)
        known = state is not None and state.mirror_url == self.url
        self._mirrored_step: int | None = state.mirror_step if known and state else None
        self._cond = threading.Condition()
        self._wake = True  # a first pass: a checkpoint of an earlier segment may not be up yet
        self._closing = False
        self._urgent_step: int | None = None
        self._current_step: int | None = None
        self._last_error: str | None = None
        self._state_synced_s = 0.0
        if not known:
            update_state(run_dir, durable=False, mirror_url=self.url, mirror_step=None)
        self._thread = threading.Thread(target=self._loop, name="tunedeck-mirror", daemon=True)
        self._thread.start()

    def checkpoint_saved(self, step: int, urgent: bool = False) -> None:
        """A checkpoint is complete on disk. `urgent` (a stop or a spot notice is under way)
        gives up an older upload in flight for it."""
        with self._cond:
            self._wake = True
            if urgent:
                self._urgent_step = max(step, self._urgent_step or -1)
            self._cond.notify()

    def finish(self, timeout_s: float) -> bool:
        """Upload what is left (the newest checkpoint, then the small files) for at most
        `timeout_s`; True when everything is up."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            return True
        step = self._current_step
        what = f"checkpoint-{step}" if step is not None else "the run's files"
        self._record(
            error=f"{what} was still uploading when the run ended "
            f"(launch.mirror_wait_s = {timeout_s:g} s)"
        )
        return False

    # -------------------------------------------------------------- the thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wake or self._closing, timeout=STATE_SYNC_S)
                self._wake = False
                closing = self._closing
            try:
                uploaded = self._sync_checkpoint()
                if uploaded or closing:
                    upload_files(self.fs, self.root, self.run_dir, SMALL_FILES)
                    self._state_synced_s = time.monotonic()
                elif time.monotonic() - self._state_synced_s >= STATE_SYNC_S:
                    upload_files(self.fs, self.root, self.run_dir, (STATE_FILE,))
                    self._state_synced_s = time.monotonic()
            except Exception as exc:  # each fsspec backend raises its own types (botocore's...)
                self._failed(exc)
                if closing:
                    time.sleep(RETRY_S)
                    continue
            if closing and not self._wake:
                return

    def _superseded(self, step: int) -> bool:
        urgent = self._urgent_step
        return urgent is not None and urgent > step

    def _sync_checkpoint(self) -> bool:
        """Upload the newest complete checkpoint unless the mirror has it; True if uploaded."""
        local_dir = self.run_dir / CHECKPOINTS_DIR
        newest = ckpt.latest_complete(local_dir)
        if newest is None or newest.step == self._mirrored_step:
            return False
        with self._cond:
            if self._urgent_step is not None and newest.step >= self._urgent_step:
                self._urgent_step = None
        remote_dir = f"{self.root}/{CHECKPOINTS_DIR}/{newest.path.name}"
        self._current_step = newest.step
        try:
            if manifest_matches(self.fs, remote_dir, newest.path):
                self._mirrored_step = newest.step  # up already (an earlier segment sent it)
                self._record(step=newest.step)
                return False
            upload_checkpoint(
                self.fs, remote_dir, newest.path, lambda: self._superseded(newest.step)
            )
        except Superseded:
            self._wake = True
            return False
        except FileNotFoundError:
            if not newest.path.exists():
                self._wake = True  # rotated away (save_total_limit) while going up
                return False
            raise  # the mirror's side: a missing bucket, say
        finally:
            self._current_step = None
        self._mirrored_step = newest.step
        self._record(step=newest.step)
        self._prune(newest.step)
        return True

    def _prune(self, keep_step: int) -> None:
        """Remove from the mirror the checkpoints the run no longer keeps (save_total_limit, or
        those a resume discarded), once a newer one is complete there."""
        local = {p.name for p in (self.run_dir / CHECKPOINTS_DIR).glob("checkpoint-*")}
        folder = f"{self.root}/{CHECKPOINTS_DIR}"
        self.fs.invalidate_cache(folder)
        try:
            names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return
        for name in names:
            match = ckpt.CHECKPOINT_RE.match(name)
            if match and int(match.group(1)) != keep_step and name not in local:
                self.fs.rm(f"{folder}/{name}", recursive=True)

    def _record(self, step: int | None = None, error: str | None = None) -> None:
        with contextlib.suppress(OSError):  # a full disk: the trainer's own writes report it
            self._write_record(step, error)

    def _write_record(self, step: int | None, error: str | None) -> None:
        if error is None:
            self._last_error = None
            update_state(
                self.run_dir,
                durable=False,
                mirror_url=self.url,
                mirror_step=step,
                mirror_at=now_iso(),
                mirror_error=None,
            )
        else:
            update_state(self.run_dir, durable=False, mirror_error=error)

    def _failed(self, exc: BaseException) -> None:
        from runner.redact import redact, secret_values

        first = (str(exc).strip().splitlines() or [""])[0]
        message = redact(f"{type(exc).__name__}: {first}"[:300], secret_values())
        if message != self._last_error:
            self._say(f"mirror {self.url}: upload failed ({message}); training goes on")
        self._last_error = message
        self._record(error=message)


# ---------------------------------------------------------------- for viewers


def mirror_text(state: RunState, now_s: float | None = None) -> str | None:
    """The mirror's state in a few words (`checkpoint-35, 40 s ago, 5 steps behind`), None
    when the run has no mirror."""
    if not state.mirror_url:
        return None
    if state.mirror_error:
        return f"error: {state.mirror_error}"
    if state.mirror_step is None:
        return "no checkpoint uploaded yet"
    now_s = time.time() if now_s is None else now_s
    out = f"checkpoint-{state.mirror_step}"
    at = parse_iso(state.mirror_at)
    if at is not None:
        out += f", {_ago(now_s - at)}"
    behind = state.step - state.mirror_step
    out += f", {behind} steps behind" if behind > 0 else ", up to date"
    return out


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
