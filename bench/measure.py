"""Shared by the benchmarks: interleaved timing rounds, peak memory of the process and of the device."""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Callable

import jax


def interleaved_ms(calls: dict[str, Callable[[], object]], rounds: int, repeats: int = 3) -> dict[str, list[float]]:
    """Each call's mean ms over `repeats` runs, once per round, the calls taking turns (a machine that slows down slows all alike)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(call())
            times[name].append((time.perf_counter() - t0) / repeats * 1e3)
    return times


def peak_memory() -> dict[str, int]:
    """Peak device bytes in use (where the backend reports it), the process's peak RSS, and the limits they meet."""
    stats = jax.devices()[0].memory_stats() or {}
    out = {k: stats[s] for k, s in (("peak_device_bytes", "peak_bytes_in_use"), ("device_limit_bytes", "bytes_limit")) if s in stats}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out["peak_rss_bytes"] = rss if sys.platform == "darwin" else rss * 1024
    out["host_ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return out
