"""Per-update L2 norm clipping that composes with any strategy.

An update is clipped relative to the current global model: ``w' = x + (w - x)·min(1, C/‖w - x‖)``,
with the norm taken over all tensors together. Clipped updates are lazy views: strategies read
them span by span like any other update, so nothing is materialised.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rounds.aggregation.core import CHUNK, AggregationError, Tensors, flat, reference_specs


def update_norms(updates: Sequence[Tensors], *, reference: Tensors) -> np.ndarray:
    """‖w_k - x‖₂ of every update, accumulated in float64, one chunk at a time."""
    specs = reference_specs([reference, *updates])
    norms = np.zeros(len(updates), dtype=np.float64)
    for spec in specs:
        base = flat(reference[spec.name])
        for k, update in enumerate(updates):
            source = flat(update[spec.name])
            for lo in range(0, spec.size, CHUNK):
                hi = min(spec.size, lo + CHUNK)
                delta = np.subtract(source[lo:hi], base[lo:hi], dtype=np.float64)
                norms[k] += float(np.dot(delta, delta))
    return np.sqrt(norms)


def clip(
    updates: Sequence[Tensors], *, reference: Tensors, max_norm: float
) -> tuple[list[Tensors], np.ndarray]:
    """The updates with each delta scaled to at most ``max_norm``; also returns the norms."""
    if not np.isfinite(max_norm) or max_norm <= 0:
        raise AggregationError("clip_norm must be positive.", code="invalid_strategy_params")
    norms = update_norms(updates, reference=reference)
    return scale_deltas(updates, reference=reference, scales=clip_scales(norms, max_norm)), norms


def clip_scales(norms: Sequence[float], max_norm: float) -> list[float]:
    """The factor each update's change is multiplied by: min(1, max_norm / norm)."""
    return [1.0 if norm <= max_norm else max_norm / norm for norm in norms]


def clip_report(norms: Sequence[float], max_norm: float) -> dict[str, Any]:
    """What clipping did, as recorded with the version: how many were clipped, the largest."""
    norms = np.asarray(norms, dtype=np.float64)
    return {"clipped": int(np.sum(norms > max_norm)), "max_norm_seen": float(norms.max())}


def scale_deltas(
    updates: Sequence[Tensors], *, reference: Tensors, scales: Sequence[float]
) -> list[Tensors]:
    """Apply clipping scales computed earlier (e.g. once, before parallel slices)."""
    if len(scales) != len(updates):
        raise AggregationError("One scale per update is needed.", code="scales_mismatch")
    return [
        update if scale == 1.0 else ScaledDelta(update, reference, float(scale))
        for update, scale in zip(updates, scales, strict=True)
    ]


class ScaledDelta(Mapping[str, Any]):
    """``reference + scale · (update - reference)``, computed only for the spans that are read."""

    def __init__(self, update: Tensors, reference: Tensors, scale: float) -> None:
        self._update, self._reference, self._scale = update, reference, scale

    def __getitem__(self, name: str) -> _ScaledArray:
        return _ScaledArray(self._update[name], self._reference[name], self._scale)

    def __iter__(self) -> Iterator[str]:
        return iter(self._update)

    def __len__(self) -> int:
        return len(self._update)


class _ScaledArray:
    def __init__(self, array: Any, base: Any, scale: float, *, flat_view: bool = False) -> None:
        self._array, self._base, self._scale, self._flat = array, base, scale, flat_view
        self.dtype = np.dtype(array.dtype)
        self.shape = (int(np.prod(array.shape)),) if flat_view else tuple(array.shape)

    def reshape(self, *shape: Any) -> _ScaledArray:
        if shape not in {(-1,), ((-1,),)}:
            raise NotImplementedError("only flat views are supported")
        return _ScaledArray(flat(self._array), flat(self._base), self._scale, flat_view=True)

    def __getitem__(self, index: slice) -> np.ndarray:
        base = np.asarray(self._base[index])
        delta = np.subtract(self._array[index], base, dtype=np.float64)
        return (base + self._scale * delta).astype(self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.reshape(-1)[0 : int(np.prod(self.shape))].reshape(self.shape)
        return whole if dtype is None else whole.astype(dtype)
