"""The wire format of flportal: named tensors as safetensors. Both the server and the SDK use it.

A model version and an update are each one safetensors blob: an 8-byte little-endian header
length, a JSON header naming every tensor's dtype, shape and byte range, then the raw
little-endian data. No pickle, nothing executable, readable from any language.

Reading is zero-copy: :func:`open_arrays` maps the file and returns read-only views into it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import safetensors
import safetensors.numpy

# dtype names as the API spells them <-> safetensors header codes
DTYPE_CODES: dict[str, str] = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "uint32": "U32",  # masked inputs of secure aggregation (fixed point mod 2^32)
}
CODE_DTYPES: dict[str, str] = {code: name for name, code in DTYPE_CODES.items()}
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 10_000
_FINITE_CHUNK = 1 << 20


class CodecError(ValueError):
    """A blob is not a valid flportal tensor file, or does not fit the expected model."""

    def __init__(self, detail: str, *, code: str = "invalid_safetensors") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32", ...

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(
            name=str(data["name"]),
            shape=tuple(int(d) for d in data["shape"]),
            dtype=str(data["dtype"]),
        )


@dataclass(frozen=True)
class Layout:
    """A parsed, validated header: each tensor's spec and absolute byte range in the file."""

    specs: tuple[TensorSpec, ...]
    offsets: dict[str, tuple[int, int]]  # absolute [begin, end) in the file
    metadata: dict[str, str]
    total_bytes: int


def specs_of(tensors: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    return [
        TensorSpec(name, tuple(int(d) for d in a.shape), a.dtype.name)
        for name, a in sorted(tensors.items())
    ]


def encode(
    tensors: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None
) -> bytes:
    _check_encodable(tensors)
    arrays = {name: _contiguous(a, a.dtype.newbyteorder("<")) for name, a in tensors.items()}
    return bytes(safetensors.numpy.save(arrays, metadata=dict(metadata) if metadata else None))


def write(path: str | Path, tensors: Mapping[str, np.ndarray]) -> None:
    _check_encodable(tensors)
    arrays = {name: _contiguous(a, a.dtype) for name, a in tensors.items()}
    safetensors.numpy.save_file(arrays, str(path))


def decode(blob: bytes) -> dict[str, np.ndarray]:
    """Decode a blob fully into memory (owned, writable arrays)."""
    layout = parse_layout(blob[: 8 + _header_length(blob[:8], len(blob))], total_bytes=len(blob))
    return {
        spec.name: np.frombuffer(
            blob, dtype=_np_dtype(spec.dtype), count=spec.size, offset=layout.offsets[spec.name][0]
        )
        .reshape(spec.shape)
        .copy()
        for spec in layout.specs
    }


def read_layout(fp: BinaryIO, *, total_bytes: int) -> Layout:
    head = fp.read(8)
    length = _header_length(head, total_bytes)
    header = fp.read(length)
    return parse_layout(head + header, total_bytes=total_bytes)


def parse_layout(head: bytes, *, total_bytes: int) -> Layout:
    """Validate the header strictly: known dtypes, exact sizes, no gaps or overlaps."""
    length = _header_length(head[:8], total_bytes)
    if len(head) < 8 + length:
        raise CodecError("Truncated safetensors header.")
    try:
        header = json.loads(head[8 : 8 + length], object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"Safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CodecError("Safetensors header must be a JSON object.")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CodecError("Safetensors __metadata__ must map strings to strings.")
    if not header:
        raise CodecError("The file holds no tensors.", code="no_tensors")
    if len(header) > MAX_TENSORS:
        raise CodecError(f"Too many tensors ({len(header)} > {MAX_TENSORS}).")
    data_start = 8 + length
    specs: list[TensorSpec] = []
    ranges: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        spec, begin, end = _parse_entry(name, entry)
        specs.append(spec)
        ranges.append((begin, end, name))
    ranges.sort()
    cursor = 0
    for begin, end, name in ranges:
        if begin != cursor:
            raise CodecError(f"Tensor {name!r} data is not contiguous (gap or overlap).")
        cursor = end
    if data_start + cursor != total_bytes:
        raise CodecError(
            f"Data section is {total_bytes - data_start} bytes but the header describes {cursor}."
        )
    offsets = {name: (data_start + b, data_start + e) for b, e, name in ranges}
    return Layout(tuple(sorted(specs, key=lambda s: s.name)), offsets, metadata, total_bytes)


def open_arrays(path: str | Path, *, layout: Layout | None = None) -> dict[str, np.ndarray]:
    """Map a stored tensor file read-only and return zero-copy views of its tensors."""
    path = Path(path)
    if layout is None:
        with path.open("rb") as fp:
            layout = read_layout(fp, total_bytes=path.stat().st_size)
    arrays: dict[str, np.ndarray] = {}
    for spec in layout.specs:
        begin, _ = layout.offsets[spec.name]
        if spec.size == 0:
            arrays[spec.name] = np.empty(spec.shape, dtype=_np_dtype(spec.dtype))
        else:
            arrays[spec.name] = np.memmap(
                path, dtype=_np_dtype(spec.dtype), mode="r", offset=begin, shape=spec.shape
            )
    return arrays


def verify_with_library(path: str | Path) -> None:
    """Second opinion from the reference safetensors implementation (header only, cheap)."""
    try:
        with safetensors.safe_open(str(path), framework="numpy") as handle:
            handle.keys()
    except Exception as exc:  # the library raises its own SafetensorError type
        raise CodecError(f"Rejected by the safetensors reader: {exc}") from None


def check_compatible(found: Iterable[TensorSpec], expected: Iterable[TensorSpec]) -> None:
    found_by_name = {s.name: s for s in found}
    expected_by_name = {s.name: s for s in expected}
    missing = sorted(expected_by_name.keys() - found_by_name.keys())
    extra = sorted(found_by_name.keys() - expected_by_name.keys())
    if missing or extra:
        raise CodecError(
            f"Tensor names differ from the model: missing {missing}, unexpected {extra}.",
            code="tensor_names_mismatch",
        )
    for name, want in expected_by_name.items():
        got = found_by_name[name]
        if got.shape != want.shape:
            raise CodecError(
                f"Tensor {name!r} has shape {list(got.shape)}, expected {list(want.shape)}.",
                code="shape_mismatch",
            )
        if got.dtype != want.dtype:
            raise CodecError(
                f"Tensor {name!r} has dtype {got.dtype}, expected {want.dtype}.",
                code="dtype_mismatch",
            )


def check_finite(arrays: Mapping[str, np.ndarray]) -> None:
    """Raise unless every value is finite; works chunk by chunk so memory stays flat."""
    for name, array in arrays.items():
        flat = array.reshape(-1)
        for start in range(0, flat.size, _FINITE_CHUNK):
            if not np.isfinite(flat[start : start + _FINITE_CHUNK]).all():
                raise CodecError(
                    f"Tensor {name!r} contains NaN or infinite values.", code="non_finite_values"
                )


def _contiguous(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous in ``dtype``, keeping 0-d tensors 0-d (np.ascontiguousarray makes them 1-d)."""
    return np.require(np.asarray(array, dtype=dtype), requirements="C")


def _check_encodable(tensors: Mapping[str, np.ndarray]) -> None:
    if not tensors:
        raise CodecError("Nothing to encode.", code="no_tensors")
    for name, array in tensors.items():
        if array.dtype.name not in DTYPE_CODES:
            raise CodecError(
                f"Tensor {name!r} has unsupported dtype {array.dtype}.", code="unsupported_dtype"
            )


def _header_length(head: bytes, total_bytes: int) -> int:
    if len(head) < 8 or total_bytes < 8:
        raise CodecError("Too short to be a safetensors file.")
    (length,) = struct.unpack("<Q", head[:8])
    if length < 2 or length > MAX_HEADER_BYTES or 8 + length > total_bytes:
        raise CodecError(f"Implausible safetensors header length {length}.")
    return int(length)


def _parse_entry(name: str, entry: Any) -> tuple[TensorSpec, int, int]:
    if not name or len(name) > 256:
        raise CodecError("Tensor names must be 1 to 256 characters.")
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CodecError(f"Tensor {name!r}: header entry must have dtype, shape, data_offsets.")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in CODE_DTYPES:
        raise CodecError(
            f"Tensor {name!r} has unsupported dtype {code!r} (allowed: {sorted(CODE_DTYPES)}).",
            code="unsupported_dtype",
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape) or len(shape) > 8:
        raise CodecError(f"Tensor {name!r} has an invalid shape {shape!r}.")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CodecError(f"Tensor {name!r} has invalid data_offsets {offsets!r}.")
    spec = TensorSpec(name, tuple(shape), CODE_DTYPES[code])
    if offsets[1] - offsets[0] != spec.nbytes:
        raise CodecError(f"Tensor {name!r}: byte range does not match its shape and dtype.")
    return spec, int(offsets[0]), int(offsets[1])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CodecError(f"Duplicate tensor name {key!r} in header.")
        result[key] = value
    return result
