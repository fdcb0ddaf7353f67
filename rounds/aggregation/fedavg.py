"""FedAvg (McMahan et al. 2017): the average of client models weighted by their example counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from clients.sdk import codec
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

    ``updates`` may be a lazy iterable (for example of memory-mapped files): only the update
    being added is referenced, so extra memory is one model's worth (the accumulator), however
    many merchants there are. ``weights`` (usually example counts) are normalised to sum to one.
    """
    coefficients = check_weights(weights)
    coefficients = coefficients / coefficients.sum()
    reference: list[codec.TensorSpec] | None = None
    accumulator: dict[str, np.ndarray] = {}
    scratch: dict[np.dtype, np.ndarray] = {}
    count = 0
    for index, update in enumerate(updates):
        if index >= coefficients.size:
            raise AggregationError("More updates than weights.", code="weights_mismatch")
        if reference is None:
            reference = codec.specs_of(update)
            accumulator = {
                spec.name: np.zeros(spec.shape, dtype=accumulator_dtype(np.dtype(spec.dtype)))
                for spec in reference
            }
        else:
            check_compatible(reference, update, index=index)
        for name, array in update.items():
            acc = accumulator[name]
            buf = scratch.get(acc.dtype)
            if buf is None:
                buf = scratch[acc.dtype] = np.empty(CHUNK, dtype=acc.dtype)
            add_scaled(acc, array, float(coefficients[index]), buf)
        del update, array  # let the iterable release this update before producing the next
        count += 1
    if count != coefficients.size or reference is None:
        raise AggregationError(
            f"Got {count} updates for {coefficients.size} weights.", code="weights_mismatch"
        )
    return {spec.name: accumulator[spec.name].astype(spec.dtype, copy=False) for spec in reference}
