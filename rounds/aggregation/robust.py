"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean (Yin et al. 2018),
Krum and Multi-Krum (Blanchard et al. 2017).

Coordinate-wise strategies gather a cache-sized block of coordinates from every update into an
(n, K) array and sort each row with numpy's vectorised sort (much faster than ``np.partition``
for small K), so memory is bounded by the block, never K whole updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from rounds.aggregation.core import (
    AggregationError,
    Spans,
    Tensors,
    accumulator_dtype,
    flat,
    iter_spans,
    reference_specs,
    run_ranges,
)
from rounds.aggregation.fedavg import fedavg

BLOCK = 4096  # coordinates per block: K x BLOCK values stay in cache


def median(
    updates: Sequence[Tensors], *, spans: Spans | None = None, threads: int | None = None
) -> dict[str, np.ndarray]:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""
    count = len(updates)
    lower, upper = (count - 1) // 2, count // 2

    def reduce(block: np.ndarray, out: np.ndarray) -> None:
        block.sort(axis=1)
        if lower == upper:
            out[:] = block[:, lower]
        else:
            np.add(block[:, lower], block[:, upper], out=out)
            out *= out.dtype.type(0.5)

    return _coordinatewise(updates, reduce, spans, threads)


def trimmed_mean(
    updates: Sequence[Tensors],
    *,
    beta: float,
    spans: Spans | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Coordinate-wise mean after dropping the ``int(beta * K)`` smallest and largest values."""
    if not 0.0 <= beta < 0.5:
        raise AggregationError("beta must be in [0, 0.5).", code="invalid_strategy_params")
    count = len(updates)
    cut = int(beta * count)

    def reduce(block: np.ndarray, out: np.ndarray) -> None:
        block.sort(axis=1)
        np.mean(block[:, cut : count - cut], axis=1, out=out)

    return _coordinatewise(updates, reduce, spans, threads)


def pairwise_gram(updates: Sequence[Tensors], *, spans: Spans | None = None) -> np.ndarray:
    """The K x K Gram matrix of the updates, centred on their coordinate-wise median (over
    ``spans``): each block's product in the data's own precision by BLAS, the blocks summed
    in float64.

    Distances are shift-invariant, and a robust centre keeps them free of cancellation even
    when an outlier is far away. Coordinates are gathered into (n, K) blocks, so the centre
    comes from the same fast contiguous sort as the median strategy."""
    specs = reference_specs(updates)
    count = len(updates)
    gram = np.zeros((count, count), dtype=np.float64)
    for spec, start, stop in iter_spans(specs, spans):
        sources = [flat(update[spec.name]) for update in updates]
        block = np.empty(
            (min(BLOCK, max(stop - start, 1)), count), dtype=accumulator_dtype(spec.dtype)
        )
        for lo in range(start, stop, BLOCK):
            hi = min(stop, lo + BLOCK)
            rows = block[: hi - lo]
            for i, source in enumerate(sources):
                rows[:, i] = source[lo:hi]
            centre = np.sort(rows, axis=1)[:, count // 2]
            rows -= centre[:, None]
            gram += rows.T @ rows  # one block in the data's precision, summed in float64
    return gram


def krum_select(gram: np.ndarray, *, f: int, m: int = 1) -> list[int]:
    """Indices of the ``m`` updates with the lowest Krum scores (ascending score).

    A score is the sum of squared distances to the ``K - f - 2`` nearest other updates.
    """
    count = gram.shape[0]
    if f < 0:
        raise AggregationError("f must be >= 0.", code="invalid_strategy_params")
    if count < 2 * f + 3:
        raise AggregationError(
            f"Krum with f={f} needs at least {2 * f + 3} updates, got {count}.",
            code="too_few_updates",
        )
    if not 1 <= m <= count:
        raise AggregationError(f"m must be within [1, {count}].", code="invalid_strategy_params")
    norms = np.diag(gram)
    distances = np.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(distances, np.inf)
    closest = max(1, count - f - 2)
    scores = np.sort(distances, axis=1)[:, :closest].sum(axis=1)
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def krum(
    updates: Sequence[Tensors], weights: Sequence[float], *, f: int, m: int = 1
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Krum (``m == 1``: the most central update itself) or Multi-Krum (the example-weighted
    average of the ``m`` most central). Returns the result and the indices it kept."""
    chosen = krum_select(pairwise_gram(updates), f=f, m=m)
    if m == 1:
        return {name: np.array(array) for name, array in updates[chosen[0]].items()}, chosen
    return fedavg([updates[i] for i in chosen], [weights[i] for i in chosen]), chosen


def _coordinatewise(
    updates: Sequence[Tensors],
    reduce: Callable[[np.ndarray, np.ndarray], None],
    spans: Spans | None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    specs = reference_specs(updates)
    count = len(updates)
    result: dict[str, np.ndarray] = {}
    for spec, start, stop in iter_spans(specs, spans):
        dtype = accumulator_dtype(spec.dtype)
        sources = [flat(update[spec.name]) for update in updates]
        out = np.empty(stop - start, dtype=dtype)
        work = partial(_reduce_blocks, sources=sources, reduce=reduce, out=out, offset=start)
        run_ranges(work, start, stop, values=count * (stop - start), threads=threads)
        out = out.astype(spec.dtype, copy=False)
        result[spec.name] = out.reshape(spec.shape) if spans is None else out
    return result


def _reduce_blocks(
    first: int,
    last: int,
    *,
    sources: list[Any],
    reduce: Callable[[np.ndarray, np.ndarray], None],
    out: np.ndarray,
    offset: int,
) -> None:
    """Gather (n, K) blocks of coordinates over [first, last) and reduce each row."""
    block = np.empty((min(BLOCK, max(last - first, 1)), len(sources)), dtype=out.dtype)
    for lo in range(first, last, BLOCK):
        hi = min(last, lo + BLOCK)
        rows = block[: hi - lo]
        for i, source in enumerate(sources):
            rows[:, i] = source[lo:hi]
        reduce(rows, out[lo - offset : hi - offset])
