"""FedAvg (rounds/aggregation): pure numpy, checked by hand and against float64 numpy."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest

from rounds.aggregation import AggregationError, fedavg


def _w(**arrays) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}


def _code(updates, weights) -> str:
    with pytest.raises(AggregationError) as excinfo:
        fedavg(updates, weights)
    return excinfo.value.code


# --- by hand --------------------------------------------------------------------------------


def test_fedavg_of_two_updates_is_their_example_weighted_mean():
    result = fedavg([_w(w=[1, 2]), _w(w=[3, 6])], [1, 3])

    np.testing.assert_allclose(result["w"], [2.5, 5.0])


def test_fedavg_with_equal_weights_is_the_plain_mean():
    updates = [_w(a=[[0, 2], [4, 6]], b=[1]), _w(a=[[2, 2], [0, 2]], b=[3])]

    result = fedavg(updates, [7, 7])

    np.testing.assert_allclose(result["a"], [[1, 2], [2, 4]])
    np.testing.assert_allclose(result["b"], [2])


def test_fedavg_of_a_single_update_is_that_update():
    update = _w(w=[0.1, -2.0, 3.5])

    np.testing.assert_allclose(fedavg([update], [42])["w"], update["w"])


def test_fedavg_keeps_names_shapes_and_dtypes():
    updates = [
        {"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.float64)},
        {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float64)},
    ]

    result = fedavg(updates, [1, 1])

    assert result.keys() == {"a", "b"}
    assert (result["a"].shape, result["a"].dtype) == ((2, 3), np.float32)
    assert (result["b"].shape, result["b"].dtype) == ((4,), np.float64)


def test_fedavg_does_not_modify_its_inputs():
    updates = [_w(w=[1, 2]), _w(w=[3, 6])]

    fedavg(updates, [1, 3])

    np.testing.assert_array_equal(updates[0]["w"], [1, 2])
    np.testing.assert_array_equal(updates[1]["w"], [3, 6])


def test_fedavg_accepts_read_only_inputs():
    update = _w(w=[1, 2])
    update["w"].flags.writeable = False

    np.testing.assert_allclose(fedavg([update, _w(w=[3, 4])], [1, 1])["w"], [2, 3])


@pytest.mark.parametrize("scale", [1e-6, 0.5, 3, 1e9])
def test_scaling_every_weight_gives_the_same_result(scale):
    rng = np.random.default_rng(1)
    updates = [{"w": rng.uniform(-1, 1, 50).astype(np.float32)} for _ in range(4)]
    weights = [10, 20, 5, 65]

    reference = fedavg(updates, weights)
    scaled = fedavg(updates, [w * scale for w in weights])

    np.testing.assert_allclose(scaled["w"], reference["w"], rtol=1e-6, atol=1e-7)


def test_fedavg_reads_a_lazy_generator_exactly_once_per_update():
    pulls: list[int] = []

    def lazily() -> Iterator[dict[str, np.ndarray]]:
        for i in range(5):
            pulls.append(i)
            yield _w(w=[i, 2 * i])

    result = fedavg(lazily(), [1, 1, 1, 1, 1])

    assert pulls == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(result["w"], [2, 4])


def test_fedavg_accumulates_half_precision_in_single_precision():
    # 4096 equal weights: each term is 1/4096. A float16 running sum stalls at 0.5 (the next
    # term is half an ulp there and rounds away); a float32 accumulator reaches 1.0.
    count = 4096
    updates = ({"w": np.ones(3, dtype=np.float16)} for _ in range(count))

    result = fedavg(updates, [1] * count)

    assert result["w"].dtype == np.float16
    np.testing.assert_array_equal(result["w"], np.ones(3, dtype=np.float16))


def test_fedavg_matches_an_independent_float64_computation():
    rng = np.random.default_rng(2024)
    shapes = {"dense/kernel": (64, 32), "dense/bias": (32,), "head": (32, 1)}
    count = 40
    updates = [
        {name: rng.uniform(0.5, 2.0, shape).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(count)
    ]
    weights = rng.integers(1, 10_000, count).tolist()

    result = fedavg(iter(updates), weights)

    total = float(sum(weights))
    for name in shapes:
        expected = sum(
            u[name].astype(np.float64) * (w / total) for u, w in zip(updates, weights, strict=True)
        )
        assert result[name].dtype == np.float32
        np.testing.assert_allclose(result[name], expected, rtol=1e-6)


def test_fedavg_handles_tensors_larger_than_one_chunk():
    size = (1 << 18) * 2 + 17  # two full multiply-add chunks and a partial one
    first = np.arange(size, dtype=np.float64)
    second = np.full(size, 10.0)

    result = fedavg([{"w": first}, {"w": second}], [1, 4])

    np.testing.assert_allclose(result["w"], first * 0.2 + 8.0)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [[], ()])
def test_fedavg_without_updates_fails_with_no_updates(weights):
    assert _code([], weights) == "no_updates"


@pytest.mark.parametrize(
    "weights",
    [[1, 0], [1, -1], [1, float("nan")], [1, float("inf")], [0, 0]],
)
def test_fedavg_refuses_weights_that_are_not_positive_and_finite(weights):
    assert _code([_w(w=[1]), _w(w=[2])], weights) == "invalid_weights"


def test_fedavg_refuses_more_updates_than_weights():
    assert _code([_w(w=[1]), _w(w=[2]), _w(w=[3])], [1, 1]) == "weights_mismatch"


def test_fedavg_refuses_fewer_updates_than_weights():
    assert _code([_w(w=[1])], [1, 1]) == "weights_mismatch"


def test_fedavg_refuses_an_empty_stream_with_weights():
    assert _code(iter([]), [1]) == "weights_mismatch"


@pytest.mark.parametrize(
    "second",
    [_w(v=[1]), _w(w=[1], extra=[1]), {}],
)
def test_fedavg_refuses_updates_with_other_tensor_names(second):
    assert _code([_w(w=[1]), second], [1, 1]) == "tensor_names_mismatch"


@pytest.mark.parametrize("shape", [(2,), (1, 1), ()])
def test_fedavg_refuses_updates_with_another_shape(shape):
    assert _code([_w(w=[1]), {"w": np.ones(shape, np.float32)}], [1, 1]) == "shape_mismatch"


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_fedavg_refuses_updates_with_another_dtype(dtype):
    assert _code([_w(w=[1]), {"w": np.ones(1, dtype)}], [1, 1]) == "dtype_mismatch"


def test_a_mismatch_names_the_offending_update():
    with pytest.raises(AggregationError, match="Update 2"):
        fedavg([_w(w=[1]), _w(w=[1]), _w(w=[1, 2])], [1, 1, 1])


# --- memory ---------------------------------------------------------------------------------

PARAMS = 1_000_000
ONE_UPDATE = PARAMS * 4  # bytes of one float32 update


def _peak_bytes(count: int) -> int:
    def lazily() -> Iterator[dict[str, np.ndarray]]:
        for i in range(count):
            yield {"w": np.full(PARAMS, float(i), dtype=np.float32)}  # made on demand

    gc.collect()
    tracemalloc.start()
    try:
        result = fedavg(lazily(), [1.0] * count)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(result["w"][:3], (count - 1) / 2)
    return peak


def test_fedavg_memory_does_not_grow_with_the_number_of_updates():
    few, many = _peak_bytes(4), _peak_bytes(20)

    assert many < few + ONE_UPDATE / 2


def test_fedavg_of_20_lazy_updates_allocates_at_most_about_three_updates():
    assert _peak_bytes(20) <= 3.5 * ONE_UPDATE
