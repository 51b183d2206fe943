"""Samples the machine's load for the run's system charts; psutil and NVML are optional."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def make_sampler() -> Callable[[], dict[str, float]] | None:
    """Return a function that reads CPU, memory and (where NVML is present) GPU load, or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    process = psutil.Process()
    psutil.cpu_percent(None)  # the first reading is meaningless: prime the counter
    nvml: Any = None
    try:
        import pynvml

        pynvml.nvmlInit()
        nvml = pynvml
    except Exception:
        nvml = None

    def sample() -> dict[str, float]:
        out = {
            "cpu_percent": float(psutil.cpu_percent(None)),
            "memory_percent": float(psutil.virtual_memory().percent),
            "process_rss_mb": process.memory_info().rss / 2**20,
        }
        if nvml is not None:
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            out["gpu_percent"] = float(util.gpu)
            out["gpu_memory_percent"] = 100.0 * mem.used / max(1, mem.total)
        return out

    return sample
