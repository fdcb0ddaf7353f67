"""How far the updates moved the model: the L2 norm of each update's change ``w_k - x`` over all
tensors, summarised (mean, max) and recorded with the version for the dashboard.

One read of every update, chunk by chunk with the reference chunk kept in cache (the updates
are the inner loop), in the update's own precision (float16 in float32; each chunk's sum of
squares is kept in float64). Large rounds spread the chunks over threads; each
chunk's sums are kept apart and added in chunk order at the end, so the result is the same
bit for bit whatever the number of threads (one task and parallel slices record equal info).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rounds.aggregation import core
from rounds.aggregation.core import CHUNK, Tensors, accumulator_dtype, flat, reference_specs


def delta_norms(
    updates: Sequence[Tensors], *, reference: Tensors, threads: int | None = None
) -> np.ndarray:
    """``||w_k - x||_2`` of every update."""
    specs = reference_specs([reference, *updates])
    squares = np.zeros(len(updates), dtype=np.float64)
    for spec in specs:
        chunks = -(-spec.size // CHUNK)
        sums = np.zeros((chunks, len(updates)), dtype=np.float64)
        dtype = np.dtype(spec.dtype)
        dtype = accumulator_dtype(dtype) if dtype.kind == "f" else np.dtype(np.float64)
        base = flat(reference[spec.name])
        sources = [flat(update[spec.name]) for update in updates]
        count = threads if threads is not None else core.default_threads()
        if spec.size * len(updates) < core.THREADED_MIN_VALUES:
            count = 1
        count = max(1, min(count, chunks))
        if count == 1:
            _chunk_sums(sums, base, sources, dtype, 0, chunks)
        else:
            bounds = [chunks * i // count for i in range(count + 1)]
            with ThreadPoolExecutor(max_workers=count) as pool:
                for future in [
                    pool.submit(_chunk_sums, sums, base, sources, dtype, first, last)
                    for first, last in itertools.pairwise(bounds)
                ]:
                    future.result()
        squares += sums.sum(axis=0)
    return np.sqrt(squares)


def _chunk_sums(
    sums: np.ndarray, base: Any, sources: list[Any], dtype: np.dtype, first: int, last: int
) -> None:
    """``sums[c, k]``: the sum of squares of update k's change over chunk c, for chunks
    ``[first, last)``."""
    delta = np.empty(CHUNK, dtype=dtype)
    size = base.shape[0]
    for chunk in range(first, last):
        lo, hi = chunk * CHUNK, min(size, (chunk + 1) * CHUNK)
        part = delta[: hi - lo]
        reference_chunk = np.asarray(base[lo:hi], dtype=dtype)
        for k, source in enumerate(sources):
            np.subtract(source[lo:hi], reference_chunk, out=part, casting="unsafe")
            sums[chunk, k] = np.dot(part, part)


def norm_summary(norms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """What the version records: the mean and the largest norm of the updates' changes."""
    values = np.asarray(norms, dtype=np.float64)
    if values.size == 0:
        return {}
    return {"update_norm_mean": float(values.mean()), "update_norm_max": float(values.max())}
