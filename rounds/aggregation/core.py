"""Checks shared by every strategy, and the chunked multiply-add they stream with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from clients.sdk import codec

Tensors = Mapping[str, np.ndarray]
CHUNK = 1 << 18  # elements per multiply-add step: small enough to stay in cache


class AggregationError(ValueError):
    """Updates cannot be combined; ``code`` says why (``shape_mismatch``, ``invalid_weights``…)."""

    def __init__(self, detail: str, *, code: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_weights(weights: Sequence[float]) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise AggregationError("Need at least one update to aggregate.", code="no_updates")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise AggregationError(
            "Every update weight must be a positive finite number.", code="invalid_weights"
        )
    return array


def check_compatible(reference: list[codec.TensorSpec], candidate: Tensors, *, index: int) -> None:
    """Same tensor names, shapes and dtypes as the first update (the wire codec's rule)."""
    try:
        codec.check_compatible(codec.specs_of(candidate), reference)
    except codec.CodecError as exc:
        raise AggregationError(f"Update {index}: {exc.detail}", code=exc.code) from None


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """Half precision is accumulated in single precision; others in their own precision."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def add_scaled(acc: np.ndarray, x: np.ndarray, coefficient: float, scratch: np.ndarray) -> None:
    """``acc += coefficient * x`` in cache-sized chunks, without a full-size temporary."""
    acc_flat = acc.reshape(-1)
    x_flat = x.reshape(-1)
    for start in range(0, acc_flat.size, CHUNK):
        stop = min(acc_flat.size, start + CHUNK)
        buf = scratch[: stop - start]
        np.multiply(x_flat[start:stop], coefficient, out=buf, casting="unsafe")
        np.add(acc_flat[start:stop], buf, out=acc_flat[start:stop])
