"""The strategy catalogue (rounds/aggregation/strategies.py): parameter parsing, minimum update
counts, the invariants every strategy keeps, parallel slices, and robustness to an outlier."""

from __future__ import annotations

import numpy as np
import pytest

from rounds.aggregation import (
    LABELS,
    PARALLEL,
    STRATEGIES,
    AggregationError,
    aggregate,
    aggregate_span,
    assemble,
    fedavg,
    finish,
    median,
    min_updates,
    parse_params,
    partition_spans,
    trimmed_mean,
)
from rounds.aggregation.core import specs_of
from rounds.aggregation.strategies import SERVER_OPTIMIZERS, clip_updates

ALL = sorted(STRATEGIES)
KRUMS = {"krum", "multi_krum"}
ADAPTIVE = {"fedadagrad", "fedadam", "fedyogi"}  # their step is not the average itself
SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,), "scale": ()}


def _code(call, *args, **kwargs) -> str:
    with pytest.raises(AggregationError) as excinfo:
        call(*args, **kwargs)
    return excinfo.value.code


def _random_model(rng, dtype=np.float32, shapes=SHAPES) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}


def _random_updates(count: int, *, seed: int, dtype=np.float32):
    """(current weights, updates spread around it, example counts)."""
    rng = np.random.default_rng(seed)
    current = _random_model(rng, dtype)
    updates = [
        {n: (a + rng.normal(0, 0.1 * (k + 1), a.shape)).astype(dtype) for n, a in current.items()}
        for k in range(count)
    ]
    weights = rng.integers(1, 100, count).tolist()
    return current, updates, weights


def _run(strategy, updates, weights, current, *, params=None, state=None):
    return aggregate(
        strategy,
        params or {},
        updates=updates,
        weights=weights,
        current=current,
        state=state or {},
    )


def _copy(tensors):
    return {name: np.array(array, copy=True) for name, array in tensors.items()}


def _assert_same(actual, expected, *, exact=False, rtol=1e-6):
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        assert actual[name].shape == np.shape(array), name
        if exact:
            np.testing.assert_array_equal(actual[name], array, err_msg=name)
        else:
            np.testing.assert_allclose(actual[name], array, rtol=rtol, atol=1e-6, err_msg=name)


# --- parse_params -----------------------------------------------------------------------------


def test_every_strategy_has_a_label():
    assert LABELS.keys() == STRATEGIES.keys()


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("fedavg", {}),
        ("fedprox", {"mu": 0.01}),
        ("median", {}),
        ("fedavgm", {"server_lr": 1.0, "momentum": 0.9}),
        ("fedadagrad", {"eta": 0.1, "beta1": 0.0, "tau": 1e-3}),
        ("fedadam", {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
        ("fedyogi", {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
        ("trimmed_mean", {"beta": 0.1}),
        ("krum", {"f": 0}),
        ("multi_krum", {"f": 0, "m": 2}),
    ],
)
def test_parse_params_fills_in_the_defaults(strategy, expected):
    assert parse_params(strategy, None) == expected
    assert parse_params(strategy, {}) == expected


def test_parse_params_keeps_given_values_and_fills_the_rest():
    params = parse_params("fedadam", {"eta": 0.5, "clip_norm": 3})

    assert params == {"eta": 0.5, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "clip_norm": 3.0}
    assert isinstance(params["clip_norm"], float)


def test_parse_params_turns_integral_floats_into_integers():
    params = parse_params("multi_krum", {"f": 2.0, "m": 4})

    assert params == {"f": 2, "m": 4}
    assert isinstance(params["f"], int)


def test_parse_params_refuses_an_unknown_strategy():
    assert _code(parse_params, "fedsgd", {}) == "unknown_strategy"


@pytest.mark.parametrize(
    ("strategy", "raw"),
    [
        ("fedavg", {"eta": 0.1}),
        ("median", {"beta": 0.1}),
        ("krum", {"m": 2}),
        ("fedadagrad", {"beta2": 0.9}),
    ],
)
def test_parse_params_refuses_a_parameter_the_strategy_does_not_take(strategy, raw):
    assert _code(parse_params, strategy, raw) == "invalid_strategy_params"


@pytest.mark.parametrize(
    ("strategy", "raw"),
    [
        ("fedadam", {"eta": "0.1"}),
        ("fedadam", {"eta": [0.1]}),
        ("fedadam", {"beta1": True}),
        ("krum", {"f": False}),
        ("fedadam", {"eta": 0}),
        ("fedadam", {"eta": 101}),
        ("fedadam", {"tau": 0.0}),
        ("fedadam", {"beta1": 1.0}),
        ("fedyogi", {"beta2": -0.1}),
        ("fedavgm", {"momentum": 1}),
        ("fedavgm", {"server_lr": 0}),
        ("trimmed_mean", {"beta": 0.5}),
        ("trimmed_mean", {"beta": -0.01}),
        ("trimmed_mean", {"beta": float("nan")}),
        ("krum", {"f": -1}),
        ("krum", {"f": 1.5}),
        ("krum", {"f": 10_001}),
        ("multi_krum", {"m": 0}),
        ("multi_krum", {"m": 2.5}),
        ("multi_krum", {"m": "3"}),
        ("fedavg", {"clip_norm": 0}),
        ("fedavg", {"clip_norm": float("inf")}),
        ("fedavg", {"clip_norm": True}),
    ],
)
def test_parse_params_refuses_wrong_types_and_out_of_range_values(strategy, raw):
    assert _code(parse_params, strategy, raw) == "invalid_strategy_params"


@pytest.mark.parametrize(
    ("strategy", "raw"),
    [
        ("krum", {"f": float("nan")}),
        ("krum", {"f": float("inf")}),
        ("multi_krum", {"m": float("inf")}),
    ],
)
def test_parse_params_refuses_non_finite_integer_parameters(strategy, raw):
    assert _code(parse_params, strategy, raw) == "invalid_strategy_params"


@pytest.mark.parametrize("raw", ["beta", [0.1], 5, [("beta", 0.2)]])
def test_parse_params_refuses_parameters_that_are_not_an_object(raw):
    assert _code(parse_params, "trimmed_mean", raw) == "invalid_strategy_params"


@pytest.mark.parametrize(
    ("strategy", "name"),
    [(strategy, name) for strategy in ALL for name in sorted(STRATEGIES[strategy])],
)
def test_an_explicit_null_parameter_is_refused_or_takes_its_default(strategy, name):
    try:
        params = parse_params(strategy, {name: None})
    except AggregationError as exc:
        assert exc.code == "invalid_strategy_params"
    else:
        assert params == parse_params(strategy, {})


def test_a_null_clip_norm_means_no_clipping():
    assert parse_params("fedavg", {"clip_norm": None}) == {}


# --- min_updates ------------------------------------------------------------------------------


@pytest.mark.parametrize(("f", "expected"), [(0, 3), (1, 5), (2, 7), (10, 23)])
def test_krum_needs_2f_plus_3_updates(f, expected):
    assert min_updates("krum", parse_params("krum", {"f": f})) == expected


@pytest.mark.parametrize(
    ("f", "m", "expected"), [(0, 2, 3), (1, 2, 5), (1, 5, 5), (1, 6, 6), (0, 40, 40)]
)
def test_multi_krum_needs_the_larger_of_2f_plus_3_and_m_updates(f, m, expected):
    assert min_updates("multi_krum", parse_params("multi_krum", {"f": f, "m": m})) == expected


@pytest.mark.parametrize("strategy", sorted(set(ALL) - KRUMS))
def test_other_strategies_need_one_update(strategy):
    assert min_updates(strategy, parse_params(strategy, {})) == 1


@pytest.mark.parametrize("strategy", sorted(KRUMS))
def test_krum_with_fewer_updates_than_it_needs_fails_with_too_few_updates(strategy):
    current, updates, weights = _random_updates(4, seed=0)

    code = _code(_run, strategy, updates, weights, current, params={"f": 1})

    assert code == "too_few_updates"


# --- invariants of every strategy -------------------------------------------------------------


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("count", [4, 6])
def test_aggregate_refuses_a_weight_count_that_does_not_match_the_updates(strategy, count):
    current, updates, _ = _random_updates(5, seed=14)

    code = _code(_run, strategy, updates, [1] * count, current)

    assert code == "weights_mismatch"


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedavgm", "median", "trimmed_mean"])
def test_a_single_update_is_returned_unchanged(strategy):
    current, (update,), _ = _random_updates(1, seed=1)

    outcome = _run(strategy, [update], [17], current)

    _assert_same(outcome.weights, update, exact=strategy in {"median", "trimmed_mean"})


@pytest.mark.parametrize("strategy", ALL)
def test_equal_updates_give_that_update_back(strategy):
    current, (update,), _ = _random_updates(1, seed=2)
    updates = [_copy(update) for _ in range(5)]

    outcome = _run(strategy, updates, [1, 4, 2, 8, 5], current)

    if strategy in ADAPTIVE:  # one adaptive step from the current weights towards the update
        expected, _ = SERVER_OPTIMIZERS[strategy](current, update, state={})
    else:
        expected = update
    _assert_same(outcome.weights, expected, exact=strategy in {"median", "krum"})


@pytest.mark.parametrize("strategy", ALL)
def test_updates_equal_to_the_current_weights_leave_them_unchanged(strategy):
    current, _, _ = _random_updates(0, seed=3)

    outcome = _run(strategy, [_copy(current) for _ in range(3)], [1, 2, 3], current)

    # The float32 average of equal updates can be one ulp off; an adaptive step divides that by
    # about τ = 1e-3 and multiplies it by η = 0.1, so it may move by up to 100 ulp.
    _assert_same(outcome.weights, current, rtol=1e-4 if strategy in ADAPTIVE else 1e-6)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_equal_weights_give_the_plain_mean(strategy):
    current, updates, _ = _random_updates(6, seed=4)

    outcome = _run(strategy, updates, [3] * 6, current)

    expected = {n: np.mean([u[n].astype(np.float64) for u in updates], axis=0) for n in SHAPES}
    _assert_same(outcome.weights, expected)


@pytest.mark.parametrize("strategy", ALL)
def test_the_order_of_the_updates_does_not_matter(strategy):
    current, updates, weights = _random_updates(7, seed=5)
    order = [3, 6, 0, 5, 1, 4, 2]

    outcome = _run(strategy, updates, weights, current)
    shuffled = _run(strategy, [updates[i] for i in order], [weights[i] for i in order], current)

    _assert_same(shuffled.weights, outcome.weights, exact=strategy in {"median", "krum"})
    if strategy in KRUMS:  # the same updates are kept, under their new indices
        assert sorted(order[i] for i in shuffled.info["kept"]) == sorted(outcome.info["kept"])


@pytest.mark.parametrize("strategy", ALL)
def test_multiplying_every_weight_by_the_same_factor_does_not_matter(strategy):
    current, updates, weights = _random_updates(7, seed=6)

    outcome = _run(strategy, updates, weights, current)
    scaled = _run(strategy, updates, [7 * w for w in weights], current)

    _assert_same(scaled.weights, outcome.weights)


@pytest.mark.parametrize("strategy", ALL)
def test_inputs_are_not_modified(strategy):
    current, updates, weights = _random_updates(5, seed=7)
    state = _run(strategy, updates, weights, current).state  # a real state for optimisers
    copies = ([_copy(u) for u in updates], list(weights), _copy(current), _copy(state))

    _run(strategy, updates, weights, current, params={"clip_norm": 0.5}, state=state)

    for original, copy in zip(updates, copies[0], strict=True):
        _assert_same(original, copy, exact=True)
    assert weights == copies[1]
    _assert_same(current, copies[2], exact=True)
    _assert_same(state, copies[3], exact=True)


@pytest.mark.parametrize("strategy", ALL)
def test_zero_dimensional_tensors_keep_their_shape(strategy):
    current, updates, weights = _random_updates(5, seed=8)

    outcome = _run(strategy, updates, weights, current)

    assert outcome.weights["scale"].shape == ()
    assert np.isfinite(outcome.weights["scale"])
    assert all(array.shape == () for key, array in outcome.state.items() if key.endswith("scale"))


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_the_result_keeps_the_dtype_of_the_updates(strategy, dtype):
    current, updates, weights = _random_updates(5, seed=9, dtype=dtype)

    outcome = _run(strategy, updates, weights, current)

    assert {n: a.dtype for n, a in outcome.weights.items()} == dict.fromkeys(SHAPES, dtype)
    assert all(np.all(np.isfinite(a)) for a in outcome.weights.values())


def test_the_state_of_a_server_optimizer_feeds_the_next_round():
    current, updates, weights = _random_updates(3, seed=10)

    first = _run("fedadam", updates, weights, current)
    second = _run("fedadam", updates, weights, first.weights, state=first.state)

    assert set(first.state) == {f"{slot}:{n}" for slot in ("m", "v") for n in SHAPES}
    expected, _ = SERVER_OPTIMIZERS["fedadam"](
        first.weights, _run("fedavg", updates, weights, current).weights, state=first.state
    )
    _assert_same(second.weights, expected, exact=True)


@pytest.mark.parametrize("strategy", sorted(set(ALL) - set(SERVER_OPTIMIZERS)))
def test_strategies_without_a_server_optimizer_return_no_state(strategy):
    current, updates, weights = _random_updates(3, seed=11)

    assert _run(strategy, updates, weights, current, state={"m:scale": np.ones(())}).state == {}


# --- parallel slices --------------------------------------------------------------------------


def test_every_strategy_but_krum_can_run_in_slices():
    assert set(ALL) - PARALLEL == KRUMS


@pytest.mark.parametrize("strategy", sorted(KRUMS))
def test_krum_refuses_to_run_in_slices(strategy):
    _, updates, weights = _random_updates(5, seed=12)
    params = parse_params(strategy, {})

    code = _code(aggregate_span, strategy, params, updates=updates, weights=weights, spans=None)

    assert code == "not_parallel"


@pytest.mark.parametrize("clip_norm", [None, 0.5])
@pytest.mark.parametrize("parts", [1, 2, 5, 1_000])
@pytest.mark.parametrize("strategy", sorted(PARALLEL))
def test_slices_assembled_and_finished_equal_aggregate_bit_for_bit(strategy, parts, clip_norm):
    current, updates, weights = _random_updates(6, seed=parts)
    state = _run(strategy, updates, weights, current).state
    raw = {} if clip_norm is None else {"clip_norm": clip_norm}
    params = parse_params(strategy, raw)

    whole = _run(strategy, updates, weights, current, params=raw, state=state)

    clipped, info = clip_updates(updates, current, params)
    specs = specs_of(updates[0])
    pieces = [
        (spans, aggregate_span(strategy, params, updates=clipped, weights=weights, spans=spans))
        for spans in partition_spans(specs, parts)
    ]
    coordinatewise = assemble(specs, pieces)
    sliced = finish(
        strategy, params, coordinatewise=coordinatewise, current=current, state=state, info=info
    )

    _assert_same(sliced.weights, whole.weights, exact=True)
    _assert_same(sliced.state, whole.state, exact=True)
    assert sliced.info == whole.info
    for name, array in whole.weights.items():
        assert sliced.weights[name].dtype == array.dtype


# --- robustness to one planted outlier --------------------------------------------------------


def _honest_and_outlier():
    """Nine honest updates near 1.0 and one at 1e6, from the global weights 1.0."""
    rng = np.random.default_rng(13)
    current = {"w": np.ones(100, np.float32)}
    honest = [{"w": rng.normal(1.0, 0.02, 100).astype(np.float32)} for _ in range(9)]
    outlier = {"w": np.full(100, 1e6, np.float32)}
    return current, [*honest[:4], outlier, *honest[4:]], [1] * 10


def test_fedavg_is_dragged_far_away_by_one_outlier():
    current, updates, weights = _honest_and_outlier()

    outcome = _run("fedavg", updates, weights, current)

    assert np.min(np.abs(outcome.weights["w"] - 1.0)) > 1e4


@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("median", {}),
        ("trimmed_mean", {"beta": 0.1}),
        ("krum", {"f": 1}),
        ("multi_krum", {"f": 1, "m": 5}),
        ("fedavg", {"clip_norm": 1.0}),
    ],
)
def test_robust_strategies_stay_near_the_honest_updates_despite_one_outlier(strategy, params):
    current, updates, weights = _honest_and_outlier()

    outcome = _run(strategy, updates, weights, current, params=params)

    assert np.max(np.abs(outcome.weights["w"] - 1.0)) < 0.5
    if strategy in KRUMS:
        assert 4 not in outcome.info["kept"]


def test_clipping_reports_the_outlier_it_bounded():
    current, updates, weights = _honest_and_outlier()

    outcome = _run("fedavg", updates, weights, current, params={"clip_norm": 1.0})

    assert outcome.info["clipped"] == 1
    assert outcome.info["max_norm_seen"] == pytest.approx((1e6 - 1) * 10, rel=1e-6)


@pytest.mark.parametrize("strategy", ["fedavg", "median", "trimmed_mean"])
def test_threaded_aggregation_is_bit_identical_to_one_thread(strategy, monkeypatch):
    from rounds.aggregation import core

    monkeypatch.setattr(core, "THREADED_MIN_VALUES", 0)
    rng = np.random.default_rng(11)
    size = 5 * core.CHUNK + 123
    updates = [
        {
            "w": rng.standard_normal(size).astype(np.float32),
            "b": rng.standard_normal((3, 2)).astype(np.float32),
        }
        for _ in range(7)
    ]
    weights = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    params = parse_params(strategy, {})

    def run(threads: int) -> dict[str, np.ndarray]:
        if strategy == "fedavg":
            return fedavg(updates, weights, threads=threads)
        if strategy == "median":
            return median(updates, threads=threads)
        return trimmed_mean(updates, beta=params["beta"], threads=threads)

    one, several = run(1), run(3)
    for name in one:
        assert np.array_equal(one[name], several[name]), name
