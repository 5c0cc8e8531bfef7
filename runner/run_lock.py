"""One trainer per run: an exclusive lock on `trainer.lock` in the run folder.

The launcher (`run`, `resume`) takes the lock before it writes anything, hands the open file to
the training process it starts, and closes its own copy; the training process then holds the
lock for its whole life, and the kernel drops it the moment that process ends, however it ends
(SIGKILL, out of memory, a reboot). So the lock is also the liveness test: a run whose lock is
held has a trainer, whatever the clocks say and whoever reuses the pid.

Viewers test the lock with a shared, non-blocking attempt that they release at once; a launcher
that meets such a test retries for a moment before it calls the run busy.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "trainer.lock"
# The launcher passes the locked file to the training process under this variable.
LOCK_FD_ENV = "TUNEDECK_LOCK_FD"
# How long a launcher retries when the lock is taken (a viewer's test holds it for microseconds).
ACQUIRE_RETRY_S = 1.0


class RunBusy(Exception):
    """Another process holds the run's lock: a trainer runs, or another launcher is starting one."""


def acquire(run_dir: Path, retry_s: float = ACQUIRE_RETRY_S) -> int:
    """Take the run's lock; the open file descriptor holds it until closed (inheritable, so a
    child started with `pass_fds` keeps holding it). RunBusy when someone else holds it."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + retry_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunBusy(str(run_dir)) from None
            time.sleep(0.02)
        except OSError:
            os.close(fd)
            raise


def is_held(run_dir: Path) -> bool | None:
    """True when a process holds the run's lock, False when none does, None when the run has no
    lock file (made before locks existed, or not started yet) or it cannot be tested."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None  # a filesystem without flock support cannot tell; the pid check decides
    finally:
        os.close(fd)  # also releases the shared lock taken above
    return False


def inherited(run_dir: Path) -> int | None:
    """The locked descriptor the launcher handed this process, if it is this run's lock file."""
    raw = os.environ.get(LOCK_FD_ENV)
    if not raw or not raw.isdigit():
        return None
    fd = int(raw)
    try:
        held = os.fstat(fd)
        lock = os.stat(run_dir / LOCK_FILE)
    except OSError:
        return None
    if (held.st_dev, held.st_ino) != (lock.st_dev, lock.st_ino):
        return None
    os.set_inheritable(fd, False)  # the trainer's own children (data workers) need not hold it
    return fd
