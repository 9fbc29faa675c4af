"""What a benchmark ran on, printed at the top of every report (the figures are only ratios)."""
from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from typing import Any


def machine(*modules: str) -> dict[str, Any]:
    """Platform, CPU model and count, load, Python, and the versions of ``modules``."""
    cpu = platform.processor() or ""
    try:
        # platform.processor() is often empty or just "x86_64" on Linux; the model name says more
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
    }
    for name in modules:
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - a version string is optional information
            info[name] = None
    return info
