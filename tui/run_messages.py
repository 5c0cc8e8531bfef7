"""What a resume or a hard stop means for a run, said from its newest complete checkpoint.

A resume with no complete checkpoint starts the training again from step 0, and a run killed
with `stop --now` loses every step after its last complete checkpoint: the words say so rather
than promising a continuation that will not happen. The app and the command share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.checkpoints import CheckpointInfo


def newest_complete_checkpoint(run_dir: Path) -> CheckpointInfo | None:
    """The checkpoint a resume of the run in `run_dir` would start from (None: step 0)."""
    from runner.checkpoints import latest_complete
    from runner.runs import CHECKPOINTS_DIR

    return latest_complete(run_dir / CHECKPOINTS_DIR)


def resumed_text(run_id: str, start_step: int, start_checkpoint: str | None) -> str:
    """One line for a resume that has just started from `start_checkpoint` (None: step 0)."""
    if start_checkpoint is None:
        return f"restarted {run_id} from step 0: no checkpoint"
    return f"resumed {run_id} from step {start_step:,} ({start_checkpoint})"


def killed_text(run_id: str, step: int, start: CheckpointInfo | None) -> str:
    """One line for a run killed at `step` whose newest complete checkpoint is `start`."""
    head = f"killed {run_id} at step {step:,}"
    if start is None:
        return (
            f"{head}; it has no complete checkpoint, so `tunedeck resume {run_id}` "
            "starts it again from step 0"
        )
    return (
        f"{head}; `tunedeck resume {run_id}` continues from step {start.step:,} "
        f"({start.path.name}, its newest complete checkpoint)"
    )
