"""Which checkpoints of a run can be resumed from.

transformers' `get_last_checkpoint` takes the highest `checkpoint-N` folder with no check, so a
checkpoint torn by a hard kill makes a naive resume crash. Here a checkpoint counts only when it
is complete: weights or adapter, optimizer, scheduler, RNG state, a readable `trainer_state.json`
whose step matches the folder, and no incomplete marker (ours, written before the save starts and
removed once every rank has finished, or transformers' own).

No torch here: viewers call this too.
"""

from __future__ import annotations

import json
import re
import shutil
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


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """What, if anything, is missing from one checkpoint folder."""
    match = CHECKPOINT_RE.match(path.name)
    step = int(match.group(1)) if match else -1
    problems: list[str] = []
    for marker in (INCOMPLETE_MARKER, HF_INCOMPLETE_MARKER):
        if (path / marker).exists():
            problems.append(f"incomplete marker {marker}")
    if not any(_nonempty(path / name) for name in WEIGHT_FILES) and not any(
        p.is_dir() and p.name.startswith("pytorch_model_fsdp") for p in _children(path)
    ):
        problems.append("no weights or adapter")
    if not _nonempty(path / "optimizer.pt") and not any(
        p.name.startswith("optimizer") for p in _children(path) if p.name != "optimizer.pt"
    ):
        problems.append("no optimizer state")
    if not _nonempty(path / "scheduler.pt"):
        problems.append("no scheduler state")
    if not any(p.name.startswith("rng_state") and _nonempty(p) for p in _children(path)):
        problems.append("no RNG state")
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("global_step") != step:
            problems.append(f"trainer_state.json says step {state.get('global_step')}")
    except (OSError, ValueError):
        problems.append("trainer_state.json missing or unreadable")
    return CheckpointInfo(path=path, step=step, problems=tuple(problems))


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
