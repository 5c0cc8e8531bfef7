"""Which checkpoints of a run can be resumed from.

transformers' `get_last_checkpoint` takes the highest `checkpoint-N` folder with no check, so a
checkpoint torn by a hard kill makes a naive resume crash. Here a checkpoint counts only when it
is complete: weights or adapter, optimizer, scheduler, RNG state, a readable `trainer_state.json`
whose step matches the folder, and no incomplete marker (ours, written before the save starts and
removed once every rank has finished, or transformers' own). Files are checked by their own
headers, not only by their presence: a safetensors file must be as long as its header says, and
torch's zip archives (optimizer, scheduler, RNG state, `.bin` weights) must have their whole
central directory and every member inside the file. That reads a few kilobytes per file.

No torch here: viewers call this too.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
INCOMPLETE_MARKER = ".tunedeck-incomplete"
HF_INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"
WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.problems


# A safetensors header longer than this is not one (the format caps it at 100 MB).
SAFETENSORS_MAX_HEADER = 100_000_000


def file_problem(path: Path) -> str | None:
    """What is wrong with one saved file, judged by its format; None when it looks whole."""
    try:
        size = path.stat().st_size
    except OSError:
        return f"{path.name} missing"
    if size == 0:
        return f"{path.name} is empty"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, size)
    if path.suffix in (".pt", ".pth", ".bin"):
        return _torch_zip_problem(path, size)
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return f"{path.name} is not readable JSON"
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return f"{path.name} is truncated (no header)"
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(SAFETENSORS_MAX_HEADER, size - 8):
                return f"{path.name} is truncated (header of {header_len} bytes)"
            header = json.loads(fh.read(header_len))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"{path.name} has an unreadable header"
    if not isinstance(header, dict):
        return f"{path.name} has an unreadable header"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return f"{path.name} has an unreadable header"
        end = max(end, int(offsets[1]))
    expected = 8 + header_len + end
    if size < expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def _torch_zip_problem(path: Path, size: int) -> str | None:
    """torch.save writes a zip archive; a torn one lacks its central directory (at the end)
    or has members reaching past the end of the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                # Local header (30 bytes + name + extra) and the stored data must fit.
                if info.header_offset + 30 + len(info.filename) + info.compress_size > size:
                    return f"{path.name} is truncated ({info.filename} runs past the end)"
    except zipfile.BadZipFile:
        if zipfile.is_zipfile(path):
            return f"{path.name} is damaged"
        return _legacy_pickle_problem(path)
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror})"
    return None


def _legacy_pickle_problem(path: Path) -> str | None:
    # torch's pre-1.6 format (still written with _use_new_zipfile_serialization=False) starts
    # with a pickle; a torn zip archive does not.
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError:
        return f"{path.name} cannot be read"
    return None if head[:1] == b"\x80" else f"{path.name} is truncated or not a torch file"


def _weights_problem(path: Path) -> str | None:
    """The model or adapter weights of a checkpoint: one file, an index with its shards, or
    an FSDP sharded folder."""
    for name in WEIGHT_FILES:
        candidate = path / name
        if not candidate.exists():
            continue
        if name.endswith(".index.json"):
            return _index_problem(candidate)
        return file_problem(candidate)
    fsdp = [p for p in _children(path) if p.is_dir() and p.name.startswith("pytorch_model_fsdp")]
    if fsdp:
        return None if all((d / ".metadata").is_file() for d in fsdp) else "FSDP shards torn"
    return "no weights or adapter"


def _index_problem(index: Path) -> str | None:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return f"{index.name} is not readable JSON"
    if not isinstance(weight_map, dict) or not weight_map:
        return f"{index.name} lists no shards"
    for shard in sorted(set(map(str, weight_map.values()))):
        problem = file_problem(index.parent / shard)
        if problem:
            return problem
    return None


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """What, if anything, is missing or damaged in one checkpoint folder."""
    match = CHECKPOINT_RE.match(path.name)
    step = int(match.group(1)) if match else -1
    problems: list[str] = []
    for marker in (INCOMPLETE_MARKER, HF_INCOMPLETE_MARKER):
        if (path / marker).exists():
            problems.append(f"incomplete marker {marker}")
    weights = _weights_problem(path)
    if weights:
        problems.append(weights)
    children = _children(path)
    if (path / "optimizer.pt").exists():
        optimizer = file_problem(path / "optimizer.pt")
        if optimizer:
            problems.append(optimizer)
    elif not any(p.name.startswith("optimizer") for p in children):
        problems.append("no optimizer state")  # sharded optimizers keep their own names
    scheduler = file_problem(path / "scheduler.pt")
    if scheduler:
        problems.append("no scheduler state" if "missing" in scheduler else scheduler)
    rng = [p for p in children if p.name.startswith("rng_state") and p.is_file()]
    if not rng:
        problems.append("no RNG state")
    problems += [problem for problem in map(file_problem, rng) if problem]
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("global_step") != step:
            said = state.get("global_step") if isinstance(state, dict) else None
            problems.append(f"trainer_state.json says step {said}")
    except (OSError, UnicodeDecodeError, ValueError):
        problems.append("trainer_state.json missing or unreadable")
    return CheckpointInfo(path=path, step=step, problems=tuple(problems))


def trainer_max_steps(path: Path) -> int | None:
    """The run's total steps as the trainer recorded them in a checkpoint, if readable."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    value = state.get("max_steps") if isinstance(state, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _children(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def list_checkpoints(checkpoints_dir: Path) -> list[CheckpointInfo]:
    """Every `checkpoint-N` folder, oldest step first, each with its problems."""
    found = [
        inspect_checkpoint(p)
        for p in _children(checkpoints_dir)
        if p.is_dir() and CHECKPOINT_RE.match(p.name)
    ]
    return sorted(found, key=lambda c: c.step)


def latest_complete(checkpoints_dir: Path) -> CheckpointInfo | None:
    """The newest complete checkpoint, skipping torn ones; None when there is none."""
    complete = [c for c in list_checkpoints(checkpoints_dir) if c.complete]
    return complete[-1] if complete else None


def discard_after(checkpoints_dir: Path, keep: CheckpointInfo | None) -> list[CheckpointInfo]:
    """Remove checkpoints newer than `keep` (all of them torn, or `keep` would be newer) and
    any torn one, so the resumed run rewrites those steps into clean folders. Returns them."""
    removed = []
    keep_step = keep.step if keep else -1
    for info in list_checkpoints(checkpoints_dir):
        if info.step > keep_step or not info.complete:
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info)
    return removed
