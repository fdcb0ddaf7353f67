"""The safetensors wire codec (clients/sdk/codec.py): pure, no Django, no database."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from clients.sdk import codec
from clients.sdk.codec import CodecError, TensorSpec


def _blob(header: dict | str, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A hand-made safetensors file: 8-byte little-endian header length, header, data."""
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _parse(blob: bytes) -> codec.Layout:
    return codec.parse_layout(blob, total_bytes=len(blob))


def _error(blob: bytes) -> CodecError:
    with pytest.raises(CodecError) as excinfo:
        _parse(blob)
    return excinfo.value


# --- encode / decode ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 4), (2, 3, 4), (1, 1, 1, 7)])
def test_encode_then_decode_gives_back_the_same_tensors(dtype, shape):
    rng = np.random.default_rng(0)
    tensors = {
        "layer.0/weight": rng.standard_normal(shape).astype(dtype),
        "bias": np.arange(3, dtype=dtype),
    }

    decoded = codec.decode(codec.encode(tensors))

    assert decoded.keys() == tensors.keys()
    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)


def test_decoded_arrays_are_owned_and_writable():
    decoded = codec.decode(codec.encode({"w": np.ones(3, dtype=np.float32)}))

    decoded["w"][0] = 5.0

    assert decoded["w"].flags.owndata or decoded["w"].base is not None
    assert decoded["w"][0] == 5.0


def test_encode_keeps_string_metadata():
    blob = codec.encode({"w": np.ones(2, dtype=np.float32)}, metadata={"round": "3"})

    assert _parse(blob).metadata == {"round": "3"}


def test_encode_converts_big_endian_arrays_to_little_endian():
    tensors = {"w": np.arange(4, dtype=">f4")}

    decoded = codec.decode(codec.encode(tensors))

    np.testing.assert_array_equal(decoded["w"], [0, 1, 2, 3])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64])
def test_encode_refuses_unsupported_dtypes(dtype):
    with pytest.raises(CodecError) as excinfo:
        codec.encode({"w": np.zeros(2, dtype=dtype)})

    assert excinfo.value.code == "unsupported_dtype"


def test_encode_refuses_an_empty_mapping():
    with pytest.raises(CodecError) as excinfo:
        codec.encode({})

    assert excinfo.value.code == "no_tensors"


def test_specs_of_lists_tensors_sorted_by_name():
    specs = codec.specs_of({"b": np.zeros((2, 3), np.float32), "a": np.zeros(1, np.float64)})

    assert specs == [TensorSpec("a", (1,), "float64"), TensorSpec("b", (2, 3), "float32")]


# --- open_arrays ----------------------------------------------------------------------------


def test_open_arrays_returns_read_only_memmaps_equal_to_the_data(tmp_path):
    tensors = {
        "weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "bias": np.array([0.5], dtype=np.float64),
        "half": np.linspace(0, 1, 5).astype(np.float16),
    }
    path = tmp_path / "w.safetensors"
    codec.write(path, tensors)

    arrays = codec.open_arrays(path)

    assert arrays.keys() == tensors.keys()
    for name, array in tensors.items():
        assert isinstance(arrays[name], np.memmap)
        assert not arrays[name].flags.writeable
        assert arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(arrays[name], array)
    with pytest.raises(ValueError, match="read-only"):
        arrays["weight"][0, 0] = 1.0


def test_open_arrays_reads_what_encode_produced(tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float64).reshape(2, 3)}
    path = tmp_path / "w.safetensors"
    path.write_bytes(codec.encode(tensors))

    np.testing.assert_array_equal(codec.open_arrays(path)["w"], tensors["w"])


def test_read_layout_reads_only_the_header_from_a_file_object():
    blob = codec.encode({"w": np.ones(4, dtype=np.float32)})

    layout = codec.read_layout(io.BytesIO(blob), total_bytes=len(blob))

    assert layout.specs == (TensorSpec("w", (4,), "float32"),)
    assert layout.offsets["w"][1] == len(blob)


# --- parse_layout: what a valid hand-made file looks like ------------------------------------


def test_parse_layout_accepts_a_hand_made_file_and_gives_absolute_offsets():
    header = {"a": _entry("F32", [2], 0, 8), "b": _entry("F16", [2, 2], 8, 16)}
    blob = _blob(header, bytes(16))

    layout = _parse(blob)

    data_start = len(blob) - 16
    assert layout.specs == (TensorSpec("a", (2,), "float32"), TensorSpec("b", (2, 2), "float16"))
    assert layout.offsets == {"a": (data_start, data_start + 8), "b": (data_start + 8, len(blob))}


def test_parse_layout_accepts_a_header_padded_with_spaces():
    raw = json.dumps({"a": _entry("F64", [1], 0, 8)}) + "   "

    assert _parse(_blob(raw, bytes(8))).specs == (TensorSpec("a", (1,), "float64"),)


# --- parse_layout: what it rejects -----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7])
def test_parse_layout_rejects_a_file_shorter_than_the_length_prefix(size):
    blob = codec.encode({"w": np.ones(4, dtype=np.float32)})[:size]

    assert _error(blob).code == "invalid_safetensors"


def test_parse_layout_rejects_a_file_cut_inside_the_header():
    blob = codec.encode({"w": np.ones(4, dtype=np.float32)})
    cut = blob[:20]

    error = _error(cut)

    assert error.code == "invalid_safetensors"
    assert "header length" in error.detail


def test_parse_layout_rejects_a_file_cut_inside_the_data():
    blob = codec.encode({"w": np.ones(4, dtype=np.float32)})

    error = _error(blob[:-1])

    assert error.code == "invalid_safetensors"
    assert "Data section" in error.detail


def test_parse_layout_rejects_a_head_shorter_than_its_declared_header():
    blob = codec.encode({"w": np.ones(4, dtype=np.float32)})

    with pytest.raises(CodecError, match="Truncated"):
        codec.parse_layout(blob[:12], total_bytes=len(blob))


@pytest.mark.parametrize("length", [0, 1, codec.MAX_HEADER_BYTES + 1, 2**63])
def test_parse_layout_rejects_an_implausible_header_length(length):
    blob = _blob({"a": _entry("F32", [1], 0, 4)}, bytes(4), length=length)

    error = _error(blob)

    assert error.code == "invalid_safetensors"
    assert "header length" in error.detail


def test_parse_layout_rejects_a_header_length_larger_than_the_file():
    header = json.dumps({"a": _entry("F32", [1], 0, 4)}).encode()
    blob = _blob({"a": _entry("F32", [1], 0, 4)}, bytes(4), length=len(header) + 5)

    assert "header length" in _error(blob).detail


@pytest.mark.parametrize("raw", ["{not json}", '{"a": ', "\xff\xfe", "[1, 2]", '"text"', "null"])
def test_parse_layout_rejects_a_header_that_is_not_a_json_object(raw):
    blob = _blob(raw.ljust(2), bytes(4))

    assert _error(blob).code == "invalid_safetensors"


def test_parse_layout_rejects_invalid_utf8_in_the_header():
    raw = b'{"\xff": 1}'
    blob = struct.pack("<Q", len(raw)) + raw

    assert _error(blob).code == "invalid_safetensors"


def test_parse_layout_rejects_duplicate_tensor_names():
    entry = json.dumps(_entry("F32", [1], 0, 4))
    raw = f'{{"a": {entry}, "a": {json.dumps(_entry("F32", [1], 4, 8))}}}'

    error = _error(_blob(raw, bytes(8)))

    assert error.code == "invalid_safetensors"
    assert "Duplicate" in error.detail


@pytest.mark.parametrize("dtype", ["I32", "BF16", "F8_E4M3", "U8", "BOOL", "f32", "float32"])
def test_parse_layout_rejects_an_unknown_dtype(dtype):
    blob = _blob({"a": _entry(dtype, [1], 0, 4)}, bytes(4))

    assert _error(blob).code == "unsupported_dtype"


def test_parse_layout_rejects_a_gap_between_tensors():
    header = {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}

    error = _error(_blob(header, bytes(12)))

    assert error.code == "invalid_safetensors"
    assert "contiguous" in error.detail


def test_parse_layout_rejects_overlapping_tensors():
    header = {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}

    error = _error(_blob(header, bytes(12)))

    assert "contiguous" in error.detail


def test_parse_layout_rejects_data_that_does_not_start_at_offset_zero():
    header = {"a": _entry("F32", [1], 4, 8)}

    assert "contiguous" in _error(_blob(header, bytes(8))).detail


def test_parse_layout_rejects_extra_bytes_after_the_data():
    header = {"a": _entry("F32", [1], 0, 4)}

    error = _error(_blob(header, bytes(8)))

    assert error.code == "invalid_safetensors"
    assert "Data section" in error.detail


@pytest.mark.parametrize(
    ("shape", "offsets"),
    [([2], [0, 4]), ([1], [0, 8]), ([2, 2], [0, 8]), ([], [0, 8])],
)
def test_parse_layout_rejects_a_byte_range_that_does_not_fit_the_shape(shape, offsets):
    blob = _blob({"a": _entry("F32", shape, *offsets)}, bytes(offsets[1]))

    error = _error(blob)

    assert error.code == "invalid_safetensors"
    assert "byte range" in error.detail


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [1]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1},
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, -4]},
        [1, 2, 3],
    ],
)
def test_parse_layout_rejects_a_malformed_entry(entry):
    assert _error(_blob({"a": entry}, bytes(4))).code == "invalid_safetensors"


def test_parse_layout_rejects_a_file_without_tensors():
    assert _error(_blob({"__metadata__": {"k": "v"}})).code == "no_tensors"


@pytest.mark.parametrize("metadata", [{"k": 1}, {"k": None}, "text", [["k", "v"]], 1])
def test_parse_layout_rejects_metadata_that_is_not_strings(metadata):
    header = {"__metadata__": metadata, "a": _entry("F32", [1], 0, 4)}

    assert _error(_blob(header, bytes(4))).code == "invalid_safetensors"


@pytest.mark.parametrize("metadata", [[], "", 0, False])
def test_parse_layout_rejects_falsy_metadata_that_is_not_an_object(metadata, tmp_path):
    blob = _blob({"__metadata__": metadata, "a": _entry("F32", [1], 0, 4)}, bytes(4))
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CodecError):
        codec.verify_with_library(path)  # the reference reader refuses it...

    assert _error(blob).code == "invalid_safetensors"  # ...and so should the codec


def test_decode_refuses_what_parse_layout_refuses():
    blob = _blob({"a": _entry("I32", [1], 0, 4)}, bytes(4))

    with pytest.raises(CodecError) as excinfo:
        codec.decode(blob)

    assert excinfo.value.code == "unsupported_dtype"


# --- check_compatible -------------------------------------------------------------------------

EXPECTED = [TensorSpec("bias", (1,), "float32"), TensorSpec("weight", (4,), "float32")]


def test_check_compatible_accepts_the_expected_specs_in_any_order():
    codec.check_compatible(list(reversed(EXPECTED)), EXPECTED)


@pytest.mark.parametrize(
    "found",
    [
        [TensorSpec("bias", (1,), "float32")],
        [*EXPECTED, TensorSpec("extra", (1,), "float32")],
        [TensorSpec("bias", (1,), "float32"), TensorSpec("weights", (4,), "float32")],
    ],
)
def test_check_compatible_reports_missing_or_unexpected_names(found):
    with pytest.raises(CodecError) as excinfo:
        codec.check_compatible(found, EXPECTED)

    assert excinfo.value.code == "tensor_names_mismatch"


@pytest.mark.parametrize("shape", [(5,), (4, 1), (2, 2), ()])
def test_check_compatible_reports_a_shape_mismatch(shape):
    found = [EXPECTED[0], TensorSpec("weight", shape, "float32")]

    with pytest.raises(CodecError) as excinfo:
        codec.check_compatible(found, EXPECTED)

    assert excinfo.value.code == "shape_mismatch"


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_check_compatible_reports_a_dtype_mismatch(dtype):
    found = [EXPECTED[0], TensorSpec("weight", (4,), dtype)]

    with pytest.raises(CodecError) as excinfo:
        codec.check_compatible(found, EXPECTED)

    assert excinfo.value.code == "dtype_mismatch"


# --- check_finite -----------------------------------------------------------------------------


def test_check_finite_accepts_finite_values_of_every_dtype():
    codec.check_finite(
        {
            "a": np.array([0.0, -1.5, 65504.0], dtype=np.float16),
            "b": np.array([np.finfo(np.float32).max], dtype=np.float32),
            "c": np.zeros((2, 3), dtype=np.float64),
        }
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_check_finite_detects_nan_and_infinities(value, dtype):
    array = np.zeros((3, 3), dtype=dtype)
    array[2, 1] = value

    with pytest.raises(CodecError) as excinfo:
        codec.check_finite({"ok": np.ones(2, dtype=dtype), "bad": array})

    assert excinfo.value.code == "non_finite_values"
    assert "'bad'" in excinfo.value.detail


@pytest.mark.parametrize("index", [codec._FINITE_CHUNK, 1_500_000, 2_000_000])
def test_check_finite_detects_a_nan_beyond_the_first_chunk(index):
    array = np.zeros(2_000_001, dtype=np.float32)
    array[index] = np.nan

    with pytest.raises(CodecError) as excinfo:
        codec.check_finite({"big": array})

    assert excinfo.value.code == "non_finite_values"


def test_check_finite_detects_an_infinity_in_a_memory_mapped_file(tmp_path):
    array = np.zeros((1100, 1000), dtype=np.float32)  # 1.1M values: more than one chunk
    array[-1, -1] = np.inf
    path = tmp_path / "w.safetensors"
    codec.write(path, {"w": array})

    with pytest.raises(CodecError) as excinfo:
        codec.check_finite(codec.open_arrays(path))

    assert excinfo.value.code == "non_finite_values"


# --- verify_with_library ----------------------------------------------------------------------


def test_verify_with_library_accepts_a_file_written_by_the_codec(tmp_path):
    path = tmp_path / "w.safetensors"
    codec.write(path, {"w": np.ones(3, dtype=np.float32)})

    codec.verify_with_library(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"\x00" * 64, struct.pack("<Q", 10**6) + b"{}"],
)
def test_verify_with_library_rejects_garbage(tmp_path, content):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)

    with pytest.raises(CodecError) as excinfo:
        codec.verify_with_library(path)

    assert excinfo.value.code == "invalid_safetensors"
