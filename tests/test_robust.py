"""Byzantine-robust strategies (rounds/aggregation/robust.py): coordinate-wise median and trimmed
mean, Krum and Multi-Krum. Checked by hand, slice by slice, for memory, and against Flower."""

from __future__ import annotations

import gc
import tracemalloc
import warnings
from types import ModuleType

import numpy as np
import pytest

from rounds.aggregation import (
    AggregationError,
    assemble,
    krum,
    krum_select,
    median,
    pairwise_gram,
    partition_spans,
    trimmed_mean,
)
from rounds.aggregation.core import specs_of


def _w(**arrays) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}


def _points(*values) -> list[dict[str, np.ndarray]]:
    """One update per value, each a model with a single coordinate."""
    return [_w(w=[value]) for value in values]


def _random_updates(count: int, shapes: dict[str, tuple[int, ...]], *, seed: int) -> list[dict]:
    """Updates spread around different centres and scales, so Krum scores are well apart."""
    rng = np.random.default_rng(seed)
    updates = []
    for _ in range(count):
        centre, scale = rng.uniform(-1, 1), rng.uniform(0.5, 2.0)
        updates.append(
            {
                name: (centre + scale * rng.standard_normal(shape)).astype(np.float32)
                for name, shape in shapes.items()
            }
        )
    return updates


def _code(call, *args, **kwargs) -> str:
    with pytest.raises(AggregationError) as excinfo:
        call(*args, **kwargs)
    return excinfo.value.code


# --- median by hand ---------------------------------------------------------------------------


def test_median_of_an_odd_count_is_the_middle_value():
    result = median(_points(3.0, 1.0, 2.0))

    np.testing.assert_array_equal(result["w"], [2.0])


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    result = median(_points(4.0, 1.0, 3.0, 2.0))

    np.testing.assert_array_equal(result["w"], [2.5])


def test_median_is_taken_coordinate_by_coordinate_in_every_tensor():
    updates = [
        _w(a=[[1, 30], [5, 0]], b=[7]),
        _w(a=[[3, 10], [4, 0]], b=[9]),
        _w(a=[[2, 20], [6, 1]], b=[8]),
    ]

    result = median(updates)

    np.testing.assert_array_equal(result["a"], [[2, 20], [5, 0]])
    np.testing.assert_array_equal(result["b"], [8])
    assert result["a"].dtype == np.float32


def test_median_ignores_one_huge_value_among_three():
    result = median(_points(1.0, 1e30, 2.0))

    np.testing.assert_array_equal(result["w"], [2.0])


def test_median_does_not_modify_its_inputs():
    updates = _points(3.0, 1.0, 2.0)

    median(updates)

    assert [u["w"][0] for u in updates] == [3.0, 1.0, 2.0]


# --- trimmed mean by hand ---------------------------------------------------------------------


def test_trimmed_mean_with_beta_one_fifth_of_five_values_drops_one_at_each_end():
    # int(0.2 * 5) = 1: drop -50 and 10, average 1, 2 and 3
    result = trimmed_mean(_points(10.0, 1.0, 3.0, 2.0, -50.0), beta=0.2)

    np.testing.assert_allclose(result["w"], [2.0])


def test_trimmed_mean_with_beta_zero_is_the_plain_mean():
    result = trimmed_mean(_points(10.0, 1.0, 3.0, 2.0, -50.0), beta=0.0)

    np.testing.assert_allclose(result["w"], [-34.0 / 5])


def test_trimmed_mean_cuts_nothing_when_beta_times_count_is_below_one():
    # int(0.1 * 5) = 0
    result = trimmed_mean(_points(10.0, 1.0, 3.0, 2.0, -50.0), beta=0.1)

    np.testing.assert_allclose(result["w"], [-34.0 / 5])


def test_trimmed_mean_is_taken_coordinate_by_coordinate():
    updates = [_w(w=[0, 100]), _w(w=[1, 1]), _w(w=[2, 2]), _w(w=[3, 3]), _w(w=[100, 0])]

    result = trimmed_mean(updates, beta=0.2)

    np.testing.assert_allclose(result["w"], [2.0, 2.0])


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan")])
def test_trimmed_mean_refuses_beta_outside_zero_to_one_half(beta):
    assert _code(trimmed_mean, _points(1.0, 2.0, 3.0), beta=beta) == "invalid_strategy_params"


# --- pairwise gram and krum_select by hand ----------------------------------------------------


def _distances(gram: np.ndarray) -> np.ndarray:
    """Squared distances from a Gram matrix of (possibly centred) updates."""
    norms = np.diag(gram)
    return norms[:, None] + norms[None, :] - 2 * gram


def test_pairwise_gram_gives_the_squared_distances_between_updates_by_hand():
    updates = [_w(w=[1, 1]), _w(w=[2, 1]), _w(w=[1, 3])]

    gram = pairwise_gram(updates)

    assert gram.dtype == np.float64
    assert gram.shape == (3, 3)
    np.testing.assert_allclose(_distances(gram), [[0, 1, 4], [1, 0, 5], [4, 5, 0]], atol=1e-12)


def test_pairwise_gram_gives_the_squared_distances_across_all_tensors():
    updates = _random_updates(6, {"a": (7, 3), "b": (5,)}, seed=3)
    flat = [np.concatenate([u["a"].ravel(), u["b"]]).astype(np.float64) for u in updates]

    distances = _distances(pairwise_gram(updates))

    expected = [[np.sum((x - y) ** 2) for y in flat] for x in flat]
    np.testing.assert_allclose(
        distances, expected, rtol=1e-5, atol=1e-5
    )  # float32 data: float32 blocks


def test_krum_select_scores_by_the_k_minus_f_minus_2_nearest_distances():
    # 1-d points 0, 1, 100, 1.5, 4 with f=1: each score sums the 2 smallest squared distances.
    # 0: 1 + 2.25 = 3.25; 1: 0.25 + 1 = 1.25; 1.5: 0.25 + 2.25 = 2.5; 4: 6.25 + 9 = 15.25
    gram = pairwise_gram(_points(0.0, 1.0, 100.0, 1.5, 4.0))

    assert krum_select(gram, f=1) == [1]
    assert krum_select(gram, f=1, m=4) == [1, 3, 0, 4]


# --- krum and multi-krum by hand --------------------------------------------------------------


def test_krum_picks_the_clear_central_point_and_ignores_the_far_outlier():
    updates = _points(0.0, 1.0, 100.0, 1.5, 4.0)

    result, kept = krum(updates, [1] * 5, f=1)

    assert kept == [1]
    np.testing.assert_array_equal(result["w"], [1.0])


def test_krum_returns_a_copy_of_the_chosen_update_with_its_shape_and_dtype():
    updates = [{"w": np.full((2, 2), v, np.float64)} for v in (0.0, 1.0, 2.0, 10.0)]

    result, kept = krum(updates, [1, 1, 1, 1], f=0)

    assert kept == [1]
    assert (result["w"].shape, result["w"].dtype) == ((2, 2), np.float64)
    assert not np.shares_memory(result["w"], updates[1]["w"])


def test_multi_krum_returns_the_example_weighted_average_of_the_m_chosen():
    # Krum scores as above: 1 and 1.5 are the two most central; weights 3 and 1
    updates = _points(0.0, 1.0, 100.0, 1.5, 4.0)

    result, kept = krum(updates, [1, 3, 1000, 1, 1], f=1, m=2)

    assert kept == [1, 3]
    np.testing.assert_allclose(result["w"], [(3 * 1.0 + 1 * 1.5) / 4])


def test_multi_krum_over_every_update_is_fedavg():
    updates = _points(0.0, 1.0, 2.0, 6.0)

    result, kept = krum(updates, [1, 1, 1, 5], f=0, m=4)

    assert sorted(kept) == [0, 1, 2, 3]
    np.testing.assert_allclose(result["w"], [(0 + 1 + 2 + 30) / 8])


@pytest.mark.parametrize(("f", "count"), [(0, 2), (1, 4), (2, 6), (3, 8)])
def test_krum_with_fewer_than_2f_plus_3_updates_fails_with_too_few_updates(f, count):
    updates = _points(*range(count))

    assert _code(krum, updates, [1] * count, f=f) == "too_few_updates"


def test_krum_with_exactly_2f_plus_3_updates_is_accepted():
    updates = _points(*range(7))

    _, kept = krum(updates, [1] * 7, f=2)

    assert len(kept) == 1


def test_krum_select_refuses_a_negative_f():
    assert _code(krum_select, np.zeros((5, 5)), f=-1) == "invalid_strategy_params"


@pytest.mark.parametrize("m", [0, -1, 6])
def test_multi_krum_refuses_m_outside_one_to_the_number_of_updates(m):
    updates = _points(*range(5))

    assert _code(krum, updates, [1] * 5, f=1, m=m) == "invalid_strategy_params"


def _honest_and_far_outlier() -> tuple[list[dict], dict]:
    rng = np.random.default_rng(13)
    honest = [{"w": rng.normal(1.0, 0.02, 10_000).astype(np.float32)} for _ in range(9)]
    return honest, {"w": np.full(10_000, 1e6, np.float32)}


def test_pairwise_gram_distances_stay_accurate_when_the_first_update_is_a_far_outlier():
    honest, outlier = _honest_and_far_outlier()
    updates = [outlier, *honest]
    flat = np.array([u["w"] for u in updates], dtype=np.float64)

    distances = _distances(pairwise_gram(updates))[1:, 1:]

    expected = ((flat[1:, None, :] - flat[None, 1:, :]) ** 2).sum(axis=-1)
    np.testing.assert_allclose(distances, expected, rtol=1e-6, atol=1e-6)


def test_multi_krum_keeps_the_same_updates_whether_the_outlier_comes_first_or_last():
    honest, outlier = _honest_and_far_outlier()

    _, kept_last = krum([*honest, outlier], [1] * 10, f=1, m=3)
    _, kept_first = krum([outlier, *honest], [1] * 10, f=1, m=3)

    assert [i - 1 for i in kept_first] == kept_last


# --- spans: slices assembled give the whole result, bit for bit ------------------------------

SHAPES = {"a_kernel": (13, 7), "b_bias": (7,), "c_head": (300,), "d_scale": ()}


def _sliced(reduce, updates, parts: int) -> dict[str, np.ndarray]:
    specs = specs_of(updates[0])
    pieces = partition_spans(specs, parts)
    return assemble(specs, [(spans, reduce(updates, spans=spans)) for spans in pieces])


def test_partition_spans_cross_tensor_boundaries_and_cover_every_coordinate_once():
    specs = specs_of(_random_updates(1, SHAPES, seed=0)[0])

    pieces = partition_spans(specs, 3)

    assert any(len(piece) > 1 for piece in pieces)  # a slice spans two tensors
    for spec in specs:
        covered = np.zeros(spec.size, dtype=int)
        for piece in pieces:
            if spec.name in piece:
                start, stop = piece[spec.name]
                covered[start:stop] += 1
        np.testing.assert_array_equal(covered, 1)


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize("count", [5, 20])
@pytest.mark.parametrize(
    "reduce",
    [
        median,
        lambda updates, spans: trimmed_mean(updates, beta=0.1, spans=spans),
        lambda updates, spans: trimmed_mean(updates, beta=0.3, spans=spans),
    ],
    ids=["median", "trimmed_mean_0.1", "trimmed_mean_0.3"],
)
def test_coordinatewise_results_over_slices_assemble_to_the_whole_result_bit_for_bit(
    reduce, count, parts
):
    updates = _random_updates(count, SHAPES, seed=count + parts)

    whole = reduce(updates, spans=None)
    sliced = _sliced(reduce, updates, parts)

    assert sliced.keys() == whole.keys()
    for name, array in whole.items():
        assert (sliced[name].shape, sliced[name].dtype) == (array.shape, array.dtype)
        assert np.array_equal(sliced[name], array), name


def test_coordinatewise_slices_larger_than_one_block_assemble_bit_for_bit():
    shapes = {"big": (3 * 4096 + 5,), "small": (10,)}
    updates = _random_updates(7, shapes, seed=11)

    whole = median(updates)
    sliced = _sliced(median, updates, 2)

    for name in shapes:
        assert np.array_equal(sliced[name], whole[name])


def test_a_span_result_maps_each_name_to_a_flat_array_of_that_span():
    updates = _random_updates(3, SHAPES, seed=1)

    result = median(updates, spans={"a_kernel": (10, 20), "d_scale": (0, 1)})

    assert result.keys() == {"a_kernel", "d_scale"}
    assert result["a_kernel"].shape == (10,)
    np.testing.assert_array_equal(result["a_kernel"], median(updates)["a_kernel"].ravel()[10:20])


def test_a_span_outside_its_tensor_fails_with_invalid_span():
    updates = _random_updates(3, SHAPES, seed=1)

    assert _code(median, updates, spans={"b_bias": (0, 8)}) == "invalid_span"


def test_pairwise_gram_over_slices_sums_to_the_whole_gram():
    updates = _random_updates(6, SHAPES, seed=5)
    specs = specs_of(updates[0])

    parts = sum(pairwise_gram(updates, spans=s) for s in partition_spans(specs, 5))

    np.testing.assert_allclose(
        parts, pairwise_gram(updates), rtol=1e-5, atol=1e-4
    )  # blocks fall differently


# --- memory -----------------------------------------------------------------------------------

PARAMS = 200_000
ONE_UPDATE = PARAMS * 4  # bytes of one float32 update
COUNT = 30


class _LazyTensor:
    """A flat float32 tensor whose values are made only for the slice being read (like a
    memory map of a stored update): value i is ``i % 101 + offset``."""

    def __init__(self, offset: int, size: int) -> None:
        self.shape = (size,)
        self.dtype = np.dtype(np.float32)
        self._offset = np.float32(offset)

    def reshape(self, *shape) -> _LazyTensor:
        return self

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(self.shape[0])
        return np.arange(start, stop, dtype=np.float32) % 101 + self._offset


@pytest.mark.parametrize(
    "reduce",
    [median, lambda updates: trimmed_mean(updates, beta=0.1)],
    ids=["median", "trimmed_mean"],
)
def test_coordinatewise_strategies_over_30_lazy_updates_allocate_about_one_update(reduce):
    updates = [{"w": _LazyTensor(k, PARAMS)} for k in range(COUNT)]

    gc.collect()
    tracemalloc.start()
    try:
        result = reduce(updates)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 3 * ONE_UPDATE  # never COUNT updates at once
    # value i of update k is i % 101 + k, k = 0..29: both the median and the trimmed mean
    # (3 cut at each end) are i % 101 + 14.5
    expected = np.arange(PARAMS) % 101 + 14.5
    np.testing.assert_allclose(result["w"], expected, rtol=1e-6)


# --- agreement with Flower --------------------------------------------------------------------

FLOWER_SHAPES = {"conv": (8, 5, 25), "bias": (25,), "head": (8975,)}  # 10k parameters
FLOWER_COUNT = 20


def _flower() -> ModuleType:
    with warnings.catch_warnings():
        # Flower imports click names that click deprecates; not our concern here
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("flwr.server.strategy.aggregate")


def _flower_case(count: int = FLOWER_COUNT, *, seed: int = 7):
    """(updates, weights, Flower results) for the same random float32 multi-tensor updates."""
    updates = _random_updates(count, FLOWER_SHAPES, seed=seed)
    weights = np.random.default_rng(seed).integers(1, 1000, count).tolist()
    names = sorted(FLOWER_SHAPES)
    results = [([u[n] for n in names], w) for u, w in zip(updates, weights, strict=True)]
    return updates, weights, names, results


@pytest.mark.parametrize("count", [FLOWER_COUNT, FLOWER_COUNT - 1])
def test_median_agrees_with_flower_exactly(count):
    flower = _flower()
    updates, _, names, results = _flower_case(count)

    ours = median(updates)
    theirs = flower.aggregate_median(results)

    for name, expected in zip(names, theirs, strict=True):
        assert ours[name].dtype == expected.dtype == np.float32
        np.testing.assert_array_equal(ours[name], expected)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.3, 0.45])
def test_trimmed_mean_agrees_with_flower(beta):
    flower = _flower()
    updates, _, names, results = _flower_case()

    ours = trimmed_mean(updates, beta=beta)
    theirs = flower.aggregate_trimmed_avg(results, beta)

    for name, expected in zip(names, theirs, strict=True):
        assert ours[name].dtype == np.float32
        np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f", [0, 1, 4, 8])
def test_krum_picks_the_same_update_as_flower(f):
    flower = _flower()
    updates, weights, names, results = _flower_case(seed=f)

    ours, kept = krum(updates, weights, f=f)
    theirs = flower.aggregate_krum(results, f, 0)

    assert len(kept) == 1
    for name, expected in zip(names, theirs, strict=True):
        np.testing.assert_array_equal(ours[name], expected)


@pytest.mark.parametrize(("f", "m"), [(0, 2), (1, 5), (4, 10), (8, 20)])
def test_multi_krum_agrees_with_flower(f, m):
    flower = _flower()
    updates, weights, names, results = _flower_case(seed=f + m)

    ours, kept = krum(updates, weights, f=f, m=m)
    theirs = flower.aggregate_krum(results, f, m)

    assert len(set(kept)) == m
    for name, expected in zip(names, theirs, strict=True):
        assert ours[name].dtype == np.float32
        np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-6)
