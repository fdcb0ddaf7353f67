"""What every strategy shares: checks with precise errors, flat views, and parameter spans.

Strategies see updates as mappings of tensor name → array (numpy arrays or read-only memory maps
of stored files, or lazily clipped views). They never copy K whole updates: they work either one
update at a time or one cache-sized span of coordinates at a time.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from clients.sdk import codec

Tensors = Mapping[str, Any]  # name → np.ndarray, or an array-like with shape/dtype/flat slicing
Spans = Mapping[str, tuple[int, int]]  # name → [start, stop) in the tensor's flattened index
CHUNK = 1 << 16  # coordinates per step of a chunked loop: fits the working set in L2
# Below this many values read (updates x coordinates), threads cost more than they save.
THREADED_MIN_VALUES = 1 << 24


class AggregationError(ValueError):
    """Updates cannot be combined; ``code`` says why (``shape_mismatch``, ``invalid_weights``…)."""

    def __init__(self, detail: str, *, code: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_weights(weights: Sequence[float], count: int | None = None) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise AggregationError("Need at least one update to aggregate.", code="no_updates")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise AggregationError(
            "Every update weight must be a positive finite number.", code="invalid_weights"
        )
    if count is not None and array.size != count:
        raise AggregationError(
            f"Got {count} updates for {array.size} weights.", code="weights_mismatch"
        )
    return array


def specs_of(tensors: Tensors) -> list[codec.TensorSpec]:
    return [
        codec.TensorSpec(name, tuple(int(d) for d in a.shape), np.dtype(a.dtype).name)
        for name, a in sorted(tensors.items())
    ]


def check_compatible(reference: list[codec.TensorSpec], candidate: Tensors, *, index: int) -> None:
    """Same tensor names, shapes and dtypes as the first update (the wire codec's rule)."""
    try:
        codec.check_compatible(specs_of(candidate), reference)
    except codec.CodecError as exc:
        raise AggregationError(f"Update {index}: {exc.detail}", code=exc.code) from None


def reference_specs(updates: Sequence[Tensors]) -> list[codec.TensorSpec]:
    """The common tensor layout of ``updates`` (all checked against the first)."""
    if not updates:
        raise AggregationError("Need at least one update to aggregate.", code="no_updates")
    reference = specs_of(updates[0])
    for index, update in enumerate(updates[1:], start=1):
        check_compatible(reference, update, index=index)
    return reference


def accumulator_dtype(dtype: np.dtype | str) -> np.dtype:
    """Half precision is computed in single precision; others in their own precision."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def flat(array: Any) -> Any:
    """A 1-d view (no copy) of an array, or the array-like's own flat view."""
    return array.reshape(-1)


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_ranges(
    work: Callable[[int, int], None], start: int, stop: int, *, values: int, threads: int | None
) -> None:
    """Run ``work(lo, hi)`` over ``[start, stop)``, split into contiguous parts on threads.

    numpy releases the GIL inside its loops, so the parts run on separate cores. Each part
    writes only its own slice of the output and every value is computed by the same operations
    in the same order as in one thread, so the result is bit-for-bit the same."""
    count = threads if threads is not None else default_threads()
    if count <= 1 or values < THREADED_MIN_VALUES or stop - start < 2 * CHUNK:
        work(start, stop)
        return
    count = min(count, (stop - start) // CHUNK)
    bounds = [start + (stop - start) * i // count for i in range(count + 1)]
    with ThreadPoolExecutor(max_workers=count) as pool:
        for future in [pool.submit(work, lo, hi) for lo, hi in itertools.pairwise(bounds)]:
            future.result()


def full_spans(specs: Sequence[codec.TensorSpec]) -> dict[str, tuple[int, int]]:
    return {spec.name: (0, spec.size) for spec in specs}


def iter_spans(
    specs: Sequence[codec.TensorSpec], spans: Spans | None
) -> Iterator[tuple[codec.TensorSpec, int, int]]:
    """(spec, start, stop) for each tensor the spans cover, in name order."""
    chosen = full_spans(specs) if spans is None else spans
    for spec in specs:
        if spec.name in chosen:
            start, stop = chosen[spec.name]
            if not 0 <= start <= stop <= spec.size:
                raise AggregationError(
                    f"Span {start}:{stop} outside {spec.name!r}.", code="invalid_span"
                )
            yield spec, start, stop


def partition_spans(
    specs: Sequence[codec.TensorSpec], parts: int
) -> list[dict[str, tuple[int, int]]]:
    """Cut the concatenated parameter vector into ``parts`` contiguous, near-equal pieces."""
    total = sum(spec.size for spec in specs)
    parts = max(1, min(parts, total))
    bounds = [round(total * i / parts) for i in range(parts + 1)]
    pieces: list[dict[str, tuple[int, int]]] = [{} for _ in range(parts)]
    offset = 0
    for spec in specs:
        begin, end = offset, offset + spec.size
        for i in range(parts):
            lo, hi = max(begin, bounds[i]), min(end, bounds[i + 1])
            if lo < hi:
                pieces[i][spec.name] = (lo - begin, hi - begin)
        offset = end
    return [piece for piece in pieces if piece]


def assemble(
    specs: Sequence[codec.TensorSpec], parts: Sequence[tuple[Spans, Tensors]]
) -> dict[str, np.ndarray]:
    """Stitch flat span results (``name`` → 1-d array) back into whole tensors."""
    result = {spec.name: np.empty(spec.size, dtype=spec.dtype) for spec in specs}
    covered = {spec.name: 0 for spec in specs}
    for spans, arrays in parts:
        for name, (start, stop) in spans.items():
            result[name][start:stop] = arrays[name]
            covered[name] += stop - start
    for spec in specs:
        if covered[spec.name] != spec.size:
            raise AggregationError(
                f"Slices cover {covered[spec.name]} of {spec.size} values of {spec.name!r}.",
                code="incomplete_slices",
            )
    return {spec.name: result[spec.name].reshape(spec.shape) for spec in specs}


def span_size(spans: Spans) -> int:
    return sum(stop - start for start, stop in spans.values())


def prod(shape: Sequence[int]) -> int:
    return math.prod(shape)
