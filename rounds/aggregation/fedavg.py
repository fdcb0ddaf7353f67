"""FedAvg (McMahan et al. 2017): the average of client models weighted by their example counts.

FedProx (Li et al. 2020) aggregates the same way; its proximal term μ is a client-side hint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from rounds.aggregation.core import (
    CHUNK,
    AggregationError,
    Spans,
    Tensors,
    accumulator_dtype,
    check_compatible,
    check_weights,
    flat,
    iter_spans,
    reference_specs,
    run_ranges,
    specs_of,
)


def fedavg(
    updates: Iterable[Tensors],
    weights: Sequence[float],
    *,
    spans: Spans | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Weighted average of ``updates``, reading each update exactly once.

    With a sequence (e.g. memory-mapped files, all addressable at once) the loop runs over
    cache-sized spans of coordinates and, inside, over the updates: the accumulator span stays in
    cache, so memory traffic is one read of every update and one write of the result — close to
    the machine's memory-bandwidth limit. With a one-shot iterator each update is added in turn
    and released before the next is produced. Extra memory is one model's worth either way.
    ``spans`` restricts the work to flat index ranges (for parallel slices); the result then maps
    each name to a 1-d array of its span. Large sequences are split over ``threads`` (default:
    the machine's cores) with bit-identical results.
    """
    if isinstance(updates, Sequence):
        return _fedavg_chunked(updates, check_weights(weights, len(updates)), spans, threads)
    if spans is not None:
        raise AggregationError("Slices need addressable updates.", code="invalid_span")
    return _fedavg_streaming(iter(updates), check_weights(weights))


def coefficients_of(weights: np.ndarray, dtype: np.dtype) -> list[np.generic]:
    """Normalised weights as scalars of the computation dtype (a float64 scalar would silently
    promote every multiply of a float32 array to float64, at 2-3x the cost)."""
    normalised = weights / weights.sum()
    return [dtype.type(c) for c in normalised]


def _fedavg_chunked(
    updates: Sequence[Tensors], weights: np.ndarray, spans: Spans | None, threads: int | None
) -> dict[str, np.ndarray]:
    specs = reference_specs(updates)
    result: dict[str, np.ndarray] = {}
    for spec, start, stop in iter_spans(specs, spans):
        dtype = accumulator_dtype(spec.dtype)
        coefficients = coefficients_of(weights, dtype)
        sources = [flat(update[spec.name]) for update in updates]
        out = np.empty(stop - start, dtype=dtype)
        work = partial(
            _weighted_sum, sources=sources, coefficients=coefficients, out=out, offset=start
        )
        run_ranges(work, start, stop, values=len(updates) * (stop - start), threads=threads)
        out = out.astype(spec.dtype, copy=False)
        result[spec.name] = out.reshape(spec.shape) if spans is None else out
    return result


def _weighted_sum(
    first: int,
    last: int,
    *,
    sources: list[Any],
    coefficients: list[np.generic],
    out: np.ndarray,
    offset: int,
) -> None:
    """out[lo-offset : hi-offset] = sum_k c_k * x_k[lo:hi] over [first, last), chunk by chunk:
    the accumulator chunk stays in cache while every update streams through it once."""
    buf = np.empty(min(CHUNK, last - first), dtype=out.dtype)
    for lo in range(first, last, CHUNK):
        hi = min(last, lo + CHUNK)
        acc = out[lo - offset : hi - offset]
        tmp = buf[: hi - lo]
        np.multiply(sources[0][lo:hi], coefficients[0], out=acc, casting="unsafe")
        for source, coefficient in zip(sources[1:], coefficients[1:], strict=True):
            np.multiply(source[lo:hi], coefficient, out=tmp, casting="unsafe")
            np.add(acc, tmp, out=acc)


def _fedavg_streaming(updates: Iterator[Tensors], weights: np.ndarray) -> dict[str, np.ndarray]:
    reference = None
    accumulator: dict[str, np.ndarray] = {}
    coefficients: dict[str, list[np.generic]] = {}
    buffers: dict[str, np.ndarray] = {}
    count = 0
    for index, update in enumerate(updates):
        if index >= weights.size:
            raise AggregationError("More updates than weights.", code="weights_mismatch")
        if reference is None:
            reference = specs_of(update)
            for spec in reference:
                dtype = accumulator_dtype(spec.dtype)
                accumulator[spec.name] = np.zeros(spec.size, dtype=dtype)
                coefficients[spec.name] = coefficients_of(weights, dtype)
                buffers[spec.name] = np.empty(min(CHUNK, spec.size), dtype=dtype)
        else:
            check_compatible(reference, update, index=index)
        for spec in reference:
            acc, source = accumulator[spec.name], flat(update[spec.name])
            coefficient, buf = coefficients[spec.name][index], buffers[spec.name]
            for lo in range(0, spec.size, CHUNK):
                hi = min(spec.size, lo + CHUNK)
                tmp = buf[: hi - lo]
                np.multiply(source[lo:hi], coefficient, out=tmp, casting="unsafe")
                np.add(acc[lo:hi], tmp, out=acc[lo:hi])
        del update, source  # release this update before the iterable produces the next
        count += 1
    if reference is None or count != weights.size:
        raise AggregationError(
            f"Got {count} updates for {weights.size} weights.", code="weights_mismatch"
        )
    return {
        spec.name: accumulator[spec.name].astype(spec.dtype, copy=False).reshape(spec.shape)
        for spec in reference
    }
