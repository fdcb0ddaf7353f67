"""How far the updates moved the model: the L2 norm of each update's change ``w_k - x`` over all
tensors, summarised (mean, max) and recorded with the version for the dashboard.

One read of every update, chunk by chunk with the reference chunk kept in cache, in the update's
own precision (float16 in float32), the squares summed per chunk in float64; large rounds split
the coordinates over threads. The summary is for monitoring, so unlike the strategies it is not
required to be bit-identical across thread counts (only to float rounding)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from rounds.aggregation.core import (
    CHUNK,
    Tensors,
    accumulator_dtype,
    flat,
    reference_specs,
    run_ranges,
)


def delta_norms(
    updates: Sequence[Tensors], *, reference: Tensors, threads: int | None = None
) -> np.ndarray:
    """``||w_k - x||_2`` of every update."""
    specs = reference_specs([reference, *updates])
    squares = np.zeros(len(updates), dtype=np.float64)
    lock = threading.Lock()
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        dtype = accumulator_dtype(dtype) if dtype.kind == "f" else np.dtype(np.float64)
        base = flat(reference[spec.name])
        sources = [flat(update[spec.name]) for update in updates]

        def work(lo: int, hi: int, base=base, sources=sources, dtype=dtype) -> None:
            part = np.zeros(len(sources), dtype=np.float64)
            buffer = np.empty(min(CHUNK, hi - lo), dtype=dtype)
            for start in range(lo, hi, CHUNK):
                stop = min(hi, start + CHUNK)
                delta = buffer[: stop - start]
                reference_chunk = np.asarray(base[start:stop], dtype=dtype)
                for k, source in enumerate(sources):
                    np.subtract(source[start:stop], reference_chunk, out=delta, casting="unsafe")
                    part[k] += float(np.dot(delta, delta))
            with lock:
                squares[:] += part

        run_ranges(work, 0, spec.size, values=spec.size * len(updates), threads=threads)
    return np.sqrt(squares)


def norm_summary(norms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """What the version records: the mean and the largest norm of the updates' changes."""
    values = np.asarray(norms, dtype=np.float64)
    if values.size == 0:
        return {}
    return {"update_norm_mean": float(values.mean()), "update_norm_max": float(values.max())}
