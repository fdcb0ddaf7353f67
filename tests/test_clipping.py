"""Per-update L2 clipping (rounds/aggregation/clipping.py) and how it composes with strategies."""

from __future__ import annotations

import numpy as np
import pytest

from rounds.aggregation import AggregationError, aggregate, clip, update_norms


def _w(dtype=np.float64, **arrays) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=dtype) for name, value in arrays.items()}


def _materialised(update) -> dict[str, np.ndarray]:
    return {name: np.asarray(update[name]) for name in update}


# --- update_norms -----------------------------------------------------------------------------


def test_update_norms_are_the_l2_norm_over_all_tensors_of_the_delta_from_the_reference():
    reference = _w(a=[1.0, 1.0], b=[[2.0]])
    updates = [
        _w(a=[4.0, 1.0], b=[[6.0]]),  # delta (3, 0 | 4): norm 5
        _w(a=[1.0, 1.0], b=[[2.0]]),  # no change: norm 0
        _w(a=[0.0, 0.0], b=[[1.0]]),  # delta (-1, -1 | -1): norm √3
    ]

    norms = update_norms(updates, reference=reference)

    assert norms.dtype == np.float64
    np.testing.assert_allclose(norms, [5.0, 0.0, np.sqrt(3.0)])


def test_update_norms_of_float16_updates_are_accumulated_in_float64():
    # 100 000 deltas of 1: a float16 sum of squares would overflow at 65 504
    reference = {"w": np.zeros(100_000, np.float16)}
    update = {"w": np.ones(100_000, np.float16)}

    np.testing.assert_allclose(update_norms([update], reference=reference), [np.sqrt(1e5)])


def test_update_norms_refuse_updates_that_do_not_fit_the_reference():
    with pytest.raises(AggregationError) as excinfo:
        update_norms([_w(w=[1.0, 2.0])], reference=_w(w=[1.0]))

    assert excinfo.value.code == "shape_mismatch"


# --- clip -------------------------------------------------------------------------------------


def test_clip_leaves_updates_within_the_norm_untouched():
    reference = _w(w=[0.0, 0.0])
    inside, on_the_edge = _w(w=[0.3, 0.4]), _w(w=[3.0, 4.0])

    clipped, norms = clip([inside, on_the_edge], reference=reference, max_norm=5.0)

    assert clipped[0] is inside
    assert clipped[1] is on_the_edge
    np.testing.assert_allclose(norms, [0.5, 5.0])


def test_clip_scales_the_delta_of_a_larger_update_to_max_norm_by_hand():
    # delta (3, 4) has norm 5: scaled by 1/5 → (0.6, 0.8) from the reference (1, 1)
    reference = _w(w=[1.0, 1.0])

    clipped, norms = clip([_w(w=[4.0, 5.0])], reference=reference, max_norm=1.0)

    np.testing.assert_allclose(norms, [5.0])
    np.testing.assert_allclose(np.asarray(clipped[0]["w"]), [1.6, 1.8])


def test_clipped_updates_have_delta_norm_equal_to_max_norm():
    rng = np.random.default_rng(3)
    shapes = {"kernel": (20, 5), "bias": (5,), "scale": ()}
    reference = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    updates = [
        {n: (reference[n] + rng.normal(0, sigma, s)).astype(np.float32) for n, s in shapes.items()}
        for sigma in (0.01, 1.0, 5.0, 0.02, 10.0)
    ]

    clipped, norms = clip(updates, reference=reference, max_norm=2.0)

    assert [c is u for c, u in zip(clipped, updates, strict=True)] == list(norms <= 2.0)
    assert sum(norms > 2.0) == 3
    after = update_norms([_materialised(c) for c in clipped], reference=reference)
    np.testing.assert_allclose(after, np.minimum(norms, 2.0), rtol=1e-5)


def test_a_clipped_update_is_read_lazily_and_flat_slices_match_the_whole():
    reference = {"t": np.zeros((3, 4), np.float32)}
    update = {"t": np.arange(12, dtype=np.float32).reshape(3, 4)}

    (view,), norms = clip([update], reference=reference, max_norm=1.0)

    assert not isinstance(view["t"], np.ndarray)
    assert (view["t"].shape, view["t"].dtype) == ((3, 4), np.float32)
    whole = np.asarray(view["t"])
    assert (whole.shape, whole.dtype) == ((3, 4), np.float32)
    np.testing.assert_allclose(whole, update["t"] / norms[0], rtol=1e-6)
    np.testing.assert_array_equal(view["t"].reshape(-1)[0:12], whole.reshape(-1))
    np.testing.assert_array_equal(view["t"].reshape(-1)[5:9], whole.reshape(-1)[5:9])


def test_clip_keeps_tensor_names_and_does_not_modify_its_inputs():
    reference, update = _w(a=[0.0], b=[0.0, 0.0]), _w(a=[3.0], b=[0.0, 4.0])

    (view,), _ = clip([update], reference=reference, max_norm=1.0)

    assert set(view) == {"a", "b"}
    assert len(view) == 2
    np.testing.assert_array_equal(update["a"], [3.0])
    np.testing.assert_array_equal(update["b"], [0.0, 4.0])
    np.testing.assert_array_equal(reference["b"], [0.0, 0.0])


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_refuses_a_max_norm_that_is_not_positive_and_finite(max_norm):
    with pytest.raises(AggregationError) as excinfo:
        clip([_w(w=[1.0])], reference=_w(w=[0.0]), max_norm=max_norm)

    assert excinfo.value.code == "invalid_strategy_params"


@pytest.mark.parametrize("clip_norm", [0, -2.0, 1e13, "1", True])
def test_a_strategy_refuses_an_invalid_clip_norm(clip_norm):
    with pytest.raises(AggregationError) as excinfo:
        aggregate(
            "fedavg",
            {"clip_norm": clip_norm},
            updates=[_w(w=[1.0])],
            weights=[1],
            current=_w(w=[0.0]),
            state={},
        )

    assert excinfo.value.code == "invalid_strategy_params"


# --- composition with strategies --------------------------------------------------------------

# From the reference 0: deltas with norms 5, 0.5, 2 and √0.5; clipped to 1 they are
# (0.6, 0.8), (0.3, 0.4), (0, 1) and (0.5, 0.5).
CURRENT = _w(w=[0.0, 0.0])
UPDATES = [_w(w=[3.0, 4.0]), _w(w=[0.3, 0.4]), _w(w=[0.0, 2.0]), _w(w=[0.5, 0.5])]


def _aggregate(strategy, params, updates=UPDATES, weights=(1, 1, 1, 1), current=CURRENT):
    return aggregate(
        strategy, params, updates=updates, weights=list(weights), current=current, state={}
    )


def test_fedavg_with_clip_norm_averages_the_clipped_updates_by_hand():
    outcome = _aggregate("fedavg", {"clip_norm": 1.0})

    np.testing.assert_allclose(outcome.weights["w"], [1.4 / 4, 2.7 / 4])


def test_median_with_clip_norm_takes_the_median_of_the_clipped_updates_by_hand():
    outcome = _aggregate("median", {"clip_norm": 1.0})

    np.testing.assert_allclose(outcome.weights["w"], [0.4, 0.65])


def test_krum_with_clip_norm_chooses_among_the_clipped_updates_by_hand():
    # f=0, 2 nearest: scores (0.6,0.8): .10+.25; (0.3,0.4): .05+.25; (0,1): .40+.45;
    # (0.5,0.5): .05+.10 — the last is chosen
    outcome = _aggregate("krum", {"clip_norm": 1.0})

    assert outcome.info["kept"] == [3]
    np.testing.assert_allclose(outcome.weights["w"], [0.5, 0.5])


def test_krum_can_choose_a_clipped_update_and_returns_it_as_a_plain_array():
    # (10, 0) is clipped to (1, 0); f=0, 2 nearest: (1,0): .13+.13; (.8,±.3): .13+.36; 0: .73+.73
    updates = [_w(w=[0.8, 0.3]), _w(w=[10.0, 0.0]), _w(w=[0.8, -0.3]), _w(w=[0.0, 0.0])]

    outcome = _aggregate("krum", {"clip_norm": 1.0}, updates)

    assert outcome.info["kept"] == [1]
    assert isinstance(outcome.weights["w"], np.ndarray)
    assert outcome.weights["w"].dtype == np.float64
    np.testing.assert_allclose(outcome.weights["w"], [1.0, 0.0])


def test_info_reports_how_many_updates_were_clipped_and_the_largest_norm():
    outcome = _aggregate("fedavg", {"clip_norm": 1.0})

    assert outcome.info["clipped"] == 2
    assert outcome.info["max_norm_seen"] == pytest.approx(5.0)


def test_without_clip_norm_nothing_is_clipped_or_reported():
    outcome = _aggregate("fedavg", {})

    assert "clipped" not in outcome.info
    np.testing.assert_allclose(outcome.weights["w"], [3.8 / 4, 6.9 / 4])


def _clipped_by_hand(updates, current, max_norm):
    result = []
    for update in updates:
        delta = {n: update[n].astype(np.float64) - current[n] for n in update}
        norm = np.sqrt(sum(np.sum(d * d) for d in delta.values()))
        scale = min(1.0, max_norm / norm)
        result.append({n: (current[n] + scale * delta[n]).astype(update[n].dtype) for n in update})
    return result


@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("fedavg", {}),
        ("fedprox", {}),
        ("median", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"f": 1}),
        ("multi_krum", {"f": 1, "m": 3}),
        ("fedadam", {}),
    ],
)
def test_clip_norm_composes_with_the_strategy_as_if_the_updates_were_clipped_first(
    strategy, params
):
    rng = np.random.default_rng(8)
    shapes = {"kernel": (6, 4), "bias": (4,)}
    current = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    updates = [
        {n: (current[n] + rng.normal(0, sigma, s)).astype(np.float32) for n, s in shapes.items()}
        for sigma in (0.05, 3.0, 0.1, 5.0, 0.15, 4.0, 8.0)
    ]
    weights = [5, 1, 2, 7, 3, 4, 1]

    with_clip = _aggregate(strategy, {**params, "clip_norm": 1.5}, updates, weights, current)
    by_hand = _aggregate(
        strategy, params, _clipped_by_hand(updates, current, 1.5), weights, current
    )

    assert with_clip.info["clipped"] == 4
    for name, array in by_hand.weights.items():
        assert isinstance(with_clip.weights[name], np.ndarray)
        assert with_clip.weights[name].dtype == np.float32
        np.testing.assert_allclose(with_clip.weights[name], array, rtol=1e-5, atol=1e-6)
    if "kept" in by_hand.info:
        assert with_clip.info["kept"] == by_hand.info["kept"]
