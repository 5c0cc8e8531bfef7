"""Ranks agree on a stop even when it is asked for during the agreement itself: two real
processes in a gloo group on 127.0.0.1, rank 0's preemption notice arriving while the stop flags
are being all-reduced (as the watcher thread can)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from runner import train_callbacks
    from runner.train_callbacks import StopOnSignal

    rank, port = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    stopper = StopOnSignal()
    all_reduce = dist.all_reduce

    def reduce_then_notice(tensor, op):
        all_reduce(tensor, op=op)
        if rank == 0:  # the notice lands after this rank's flags went in
            stopper.request_stop("a preemption notice", "spot notice (aws), 120 s")

    train_callbacks.dist.all_reduce = reduce_then_notice
    first = stopper._agreed(saving=False)
    train_callbacks.dist.all_reduce = all_reduce
    second = stopper._agreed(saving=False)
    print("RESULT", json.dumps({"first": first, "second": second, "reason": stopper.stop_reason}))
    dist.destroy_process_group()
    """
)


def test_a_stop_asked_during_the_all_reduce_is_taken_by_every_rank_at_the_same_step() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(rank), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        line = next(li for li in out.splitlines() if li.startswith("RESULT "))
        results.append(json.loads(line.removeprefix("RESULT ")))
    zero, one = results
    # The step the notice came in: nobody stops (rank 0 must not stop alone: rank 1 would wait
    # for it in the next step's collectives forever).
    assert zero["first"] == one["first"] == [False, False]
    # The next step boundary: both stop, each knowing why.
    assert zero["second"] == one["second"] == [True, False]
    assert zero["reason"] == "spot notice (aws), 120 s"
    assert one["reason"] == "a preemption notice on another machine of the run"
