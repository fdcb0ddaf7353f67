"""FedAvg (McMahan et al. 2017): the average of client models weighted by their example counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from rounds.aggregation.core import (
    CHUNK,
    AggregationError,
    Tensors,
    accumulator_dtype,
    add_scaled,
    check_compatible,
    check_weights,
)


def fedavg(updates: Iterable[Tensors], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Weighted average of ``updates``; reads each update once, into a single accumulator.

    ``updates`` may be a lazy iterable (for example of memory-mapped files): only one update is
    touched at a time, so extra memory is one model's worth, whatever the number of merchants.
    ``weights`` (usually example counts) are known up front and normalised to sum to one.
    """
    coefficients = check_weights(weights)
    coefficients = coefficients / coefficients.sum()
    accumulator: dict[str, np.ndarray] | None = None
    reference: Tensors | None = None
    scratch: dict[np.dtype, np.ndarray] = {}
    count = 0
    for index, update in enumerate(updates):
        if index >= coefficients.size:
            raise AggregationError("More updates than weights.", code="weights_mismatch")
        if reference is None:
            reference = update
            accumulator = {
                name: np.zeros(a.shape, dtype=accumulator_dtype(a.dtype))
                for name, a in update.items()
            }
        else:
            check_compatible(reference, update, index=index)
        assert accumulator is not None
        for name, array in update.items():
            acc = accumulator[name]
            buf = scratch.get(acc.dtype)
            if buf is None:
                buf = scratch[acc.dtype] = np.empty(CHUNK, dtype=acc.dtype)
            add_scaled(acc, array, float(coefficients[index]), buf)
        count += 1
    if count != coefficients.size or accumulator is None or reference is None:
        raise AggregationError(
            f"Got {count} updates for {coefficients.size} weights.", code="weights_mismatch"
        )
    return {
        name: acc.astype(reference[name].dtype, copy=False) for name, acc in accumulator.items()
    }
