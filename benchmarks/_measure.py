"""Timing and memory measurement helpers (no Django, numpy only)."""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

GB = 1e9


def progress(message: str) -> None:
    """Progress goes to stderr, so that ``--json`` leaves stdout to the results."""
    print(message, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall-clock seconds of one call and its result (garbage collected first, not during)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()
    return seconds, result


def peak_extra_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak memory allocated during one call beyond what was allocated before it.

    numpy reports its data buffers to tracemalloc, so this counts every array the call creates
    (including the result it returns). Run it apart from the timed runs: tracing slows Python.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return max(0, peak - before), result


def free() -> None:
    gc.collect()
