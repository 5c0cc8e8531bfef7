"""What the box has besides GPUs: CPU, RAM, disk at the runs folder."""

from __future__ import annotations

import os
import platform
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpu_model: str
    cpu_cores_logical: int
    cpu_cores_physical: int | None
    ram_total_bytes: int
    ram_available_bytes: int
    disk_path: str
    disk_total_bytes: int | None
    disk_free_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or platform.machine() or "unknown CPU"


def _existing_parent(path: Path) -> Path:
    """The nearest folder that exists, so disk space is known before the runs folder is made."""
    current = path.expanduser().absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def host_info(disk_path: Path) -> HostInfo:
    """CPU, RAM and the free disk on the filesystem holding `disk_path`."""
    vm = psutil.virtual_memory()
    probe = _existing_parent(disk_path)
    total: int | None = None
    free: int | None = None
    try:
        usage = shutil.disk_usage(probe)
        total, free = usage.total, usage.free
    except OSError:
        pass  # an unreadable mount: disk space reads "not available"
    return HostInfo(
        hostname=socket.gethostname(),
        cpu_model=_cpu_model(),
        cpu_cores_logical=os.cpu_count() or 1,
        cpu_cores_physical=psutil.cpu_count(logical=False),
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        disk_path=str(disk_path),
        disk_total_bytes=total,
        disk_free_bytes=free,
    )
