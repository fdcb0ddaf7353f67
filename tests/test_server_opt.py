"""Server optimisers (rounds/aggregation/server_opt.py): FedAvgM (Hsu et al. 2019) and
FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2), checked against the formulas
written out here, with explicit state."""

from __future__ import annotations

import numpy as np
import pytest

from rounds.aggregation import fedadagrad, fedadam, fedavgm, fedyogi

ADAPTIVE = {"fedadagrad": fedadagrad, "fedadam": fedadam, "fedyogi": fedyogi}
OPTIMIZERS = {"fedavgm": fedavgm, **ADAPTIVE}

# x = current global weights, avg = the average of the updates: Δ = avg - x = [0.5, 0, -0.5]
X = [1.0, -2.0, 0.5]
AVG = [1.5, -2.0, 0.0]


def _w(dtype=np.float64, **arrays) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=dtype) for name, value in arrays.items()}


def _reddi(x, avg, m, v, *, variant, eta, beta1, beta2, tau):
    """One step of Reddi et al. 2021, Algorithm 2, in float64 (the test's own reference)."""
    x, avg, m, v = (np.asarray(a, dtype=np.float64) for a in (x, avg, m, v))
    delta = avg - x
    m = beta1 * m + (1 - beta1) * delta
    if variant == "adagrad":
        v = v + delta**2
    elif variant == "adam":
        v = beta2 * v + (1 - beta2) * delta**2
    else:
        v = v - (1 - beta2) * delta**2 * np.sign(v - delta**2)
    return x + eta * m / (np.sqrt(v) + tau), m, v


# --- one step by hand -------------------------------------------------------------------------


def test_fedavgm_first_step_with_momentum_zero_and_server_lr_one_is_the_average():
    rng = np.random.default_rng(0)
    current = {"w": rng.standard_normal(20), "b": rng.standard_normal(3)}
    average = {"w": rng.standard_normal(20), "b": rng.standard_normal(3)}

    weights, _ = fedavgm(current, average, state={}, server_lr=1.0, momentum=0.0)

    for name in current:
        np.testing.assert_allclose(weights[name], average[name], rtol=1e-15, atol=1e-15)


def test_fedavgm_one_step_by_hand():
    # v = 0.9·[1, 0, 0] + (x - avg) = [0.9 - 0.5, 0, 0.5]; x ← x - 0.5·v
    state = {"momentum:w": np.array([1.0, 0.0, 0.0])}

    weights, new_state = fedavgm(_w(w=X), _w(w=AVG), state=state, server_lr=0.5, momentum=0.9)

    np.testing.assert_allclose(new_state["momentum:w"], [0.4, 0.0, 0.5])
    np.testing.assert_allclose(weights["w"], [1.0 - 0.2, -2.0, 0.5 - 0.25])


def test_fedavgm_first_step_from_an_empty_state_uses_zero_momentum():
    weights, new_state = fedavgm(_w(w=X), _w(w=AVG), state={}, server_lr=2.0, momentum=0.9)

    np.testing.assert_allclose(new_state["momentum:w"], [-0.5, 0.0, 0.5])
    np.testing.assert_allclose(weights["w"], [2.0, -2.0, -0.5])


def test_fedadagrad_one_step_by_hand():
    # beta1 = 0: m = Δ; v = 0 + Δ² = [0.25, 0, 0.25]; x + 0.1·Δ/(0.5 + 0.001)
    weights, state = fedadagrad(_w(w=X), _w(w=AVG), state={}, eta=0.1, beta1=0.0, tau=1e-3)

    step = 0.1 * 0.5 / (0.5 + 1e-3)
    np.testing.assert_allclose(weights["w"], [1.0 + step, -2.0, 0.5 - step])
    np.testing.assert_allclose(state["m:w"], [0.5, 0.0, -0.5])
    np.testing.assert_allclose(state["v:w"], [0.25, 0.0, 0.25])


def test_fedadam_one_step_by_hand():
    # m = 0.1·Δ = ±0.05; v = 0.01·Δ² = 0.0025 (√v = 0.05); x + 0.1·0.05/(0.05 + 0.001)
    weights, state = fedadam(_w(w=X), _w(w=AVG), state={}, eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)

    step = 0.1 * 0.05 / (0.05 + 1e-3)
    np.testing.assert_allclose(weights["w"], [1.0 + step, -2.0, 0.5 - step])
    np.testing.assert_allclose(state["m:w"], [0.05, 0.0, -0.05])
    np.testing.assert_allclose(state["v:w"], [0.0025, 0.0, 0.0025])


def test_fedadam_with_a_previous_state_by_hand():
    # m = 0.9·[0.2, 0.2, 0] + 0.1·Δ = [0.23, 0.18, -0.05]
    # v = 0.99·[0.04, 0.01, 0] + 0.01·Δ² = [0.0421, 0.0099, 0.0025]
    state = {"m:w": np.array([0.2, 0.2, 0.0]), "v:w": np.array([0.04, 0.01, 0.0])}

    weights, new_state = fedadam(
        _w(w=X), _w(w=AVG), state=state, eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3
    )

    m = np.array([0.23, 0.18, -0.05])
    v = np.array([0.0421, 0.0099, 0.0025])
    np.testing.assert_allclose(new_state["m:w"], m)
    np.testing.assert_allclose(new_state["v:w"], v)
    np.testing.assert_allclose(weights["w"], np.array(X) + 0.1 * m / (np.sqrt(v) + 1e-3))


def test_fedyogi_first_step_from_zero_state_matches_fedadam():
    # v starts at 0 so sign(v - Δ²) = -1 wherever Δ ≠ 0: v = 0.01·Δ², as for Adam
    adam, adam_state = fedadam(_w(w=X), _w(w=AVG), state={})
    yogi, yogi_state = fedyogi(_w(w=X), _w(w=AVG), state={})

    np.testing.assert_allclose(yogi["w"], adam["w"])
    np.testing.assert_allclose(yogi_state["v:w"], adam_state["v:w"])


def test_fedyogi_changes_v_additively_by_the_sign_of_v_minus_delta_squared():
    # Δ² = [0.25, 0, 0.25]; v - Δ² = [+, 0, -]: v = [1 - 0.0025, 0, 0.0001 + 0.0025]
    state = {"m:w": np.zeros(3), "v:w": np.array([1.0, 0.0, 1e-4])}

    weights, new_state = fedyogi(
        _w(w=X), _w(w=AVG), state=state, eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3
    )

    v = np.array([0.9975, 0.0, 0.0026])
    np.testing.assert_allclose(new_state["v:w"], v)
    np.testing.assert_allclose(new_state["m:w"], [0.05, 0.0, -0.05])
    np.testing.assert_allclose(
        weights["w"], np.array(X) + 0.1 * np.array([0.05, 0.0, -0.05]) / (np.sqrt(v) + 1e-3)
    )


@pytest.mark.parametrize(
    ("name", "variant"), [("fedadagrad", "adagrad"), ("fedadam", "adam"), ("fedyogi", "yogi")]
)
def test_adaptive_optimizers_follow_algorithm_2_over_three_steps(name, variant):
    rng = np.random.default_rng(42)
    options = {"eta": 0.3, "beta1": 0.8, "tau": 1e-2}
    if variant != "adagrad":
        options["beta2"] = 0.95
    x = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    state: dict[str, np.ndarray] = {}
    expected = {n: (a, np.zeros_like(a), np.zeros_like(a)) for n, a in x.items()}

    for _ in range(3):
        average = {n: a + rng.normal(0, 0.5, a.shape) for n, a in x.items()}
        x, state = OPTIMIZERS[name](x, average, state=state, **options)
        for n in x:
            reference_x, m, v = expected[n]
            expected[n] = _reddi(
                reference_x,
                average[n],
                m,
                v,
                variant=variant,
                eta=options["eta"],
                beta1=options["beta1"],
                beta2=options.get("beta2", 0.0),
                tau=options["tau"],
            )
            np.testing.assert_allclose(x[n], expected[n][0], rtol=1e-12)
            np.testing.assert_allclose(state[f"m:{n}"], expected[n][1], rtol=1e-12)
            np.testing.assert_allclose(state[f"v:{n}"], expected[n][2], rtol=1e-12)


def test_fedavgm_second_step_uses_the_first_steps_momentum():
    x0 = _w(w=[0.0, 0.0])
    avg1, avg2 = _w(w=[1.0, -1.0]), _w(w=[2.0, 0.0])

    x1, state1 = fedavgm(x0, avg1, state={}, server_lr=1.0, momentum=0.5)
    x2, state2 = fedavgm(x1, avg2, state=state1, server_lr=1.0, momentum=0.5)

    # step 1: v = [-1, 1], x = [1, -1]; step 2: v = 0.5·[-1, 1] + ([1, -1] - [2, 0]) = [-1.5, -0.5]
    np.testing.assert_allclose(x1["w"], [1.0, -1.0])
    np.testing.assert_allclose(state2["momentum:w"], [-1.5, -0.5])
    np.testing.assert_allclose(x2["w"], [2.5, -0.5])


# --- explicit state ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slots"),
    [
        ("fedavgm", ["momentum"]),
        ("fedadagrad", ["m", "v"]),
        ("fedadam", ["m", "v"]),
        ("fedyogi", ["m", "v"]),
    ],
)
def test_state_is_returned_with_names_slot_colon_tensor(name, slots):
    current = _w(**{"dense/kernel": [[1.0, 2.0]], "dense/bias": [0.5]})
    average = _w(**{"dense/kernel": [[1.5, 1.0]], "dense/bias": [0.0]})

    _, state = OPTIMIZERS[name](current, average, state={})

    assert set(state) == {f"{slot}:{t}" for slot in slots for t in current}
    for key, array in state.items():
        assert array.shape == current[key.split(":", 1)[1]].shape


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_functions_keep_no_state_of_their_own(name):
    optimizer = OPTIMIZERS[name]
    state = {}
    _, state = optimizer(_w(w=X), _w(w=AVG), state=state)

    first = optimizer(_w(w=X), _w(w=AVG), state=state)
    second = optimizer(_w(w=X), _w(w=AVG), state=state)

    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_second_step_from_the_first_steps_state_differs_from_a_fresh_start(name):
    optimizer = OPTIMIZERS[name]
    x1, state1 = optimizer(_w(w=X), _w(w=AVG), state={})

    from_state, _ = optimizer(x1, _w(w=AVG), state=state1)
    fresh, _ = optimizer(x1, _w(w=AVG), state={})

    assert not np.allclose(from_state["w"], fresh["w"])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_inputs_are_not_modified(name):
    current, average = _w(w=X, b=[3.0]), _w(w=AVG, b=[1.0])
    slot = "momentum" if name == "fedavgm" else "m"
    state = {f"{slot}:w": np.array([0.1, 0.2, 0.3]), f"{slot}:b": np.array([0.4])}
    if name != "fedavgm":
        state |= {"v:w": np.array([0.5, 0.6, 0.7]), "v:b": np.array([0.8])}
    copies = [{k: v.copy() for k, v in d.items()} for d in (current, average, state)]

    OPTIMIZERS[name](current, average, state=state)

    for original, copy in zip((current, average, state), copies, strict=True):
        assert original.keys() == copy.keys()
        for key in copy:
            np.testing.assert_array_equal(original[key], copy[key])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_weights_and_state_keep_the_input_dtype_and_shape(name, dtype):
    current = _w(dtype, w=[[1.0, 2.0], [3.0, 4.0]], s=0.5)
    average = _w(dtype, w=[[1.5, 2.0], [2.0, 4.5]], s=0.25)

    weights, state = OPTIMIZERS[name](current, average, state={})
    weights, state = OPTIMIZERS[name](weights, average, state=state)

    for key, array in weights.items():
        assert (array.dtype, array.shape) == (dtype, current[key].shape), key
    for key, array in state.items():
        assert array.shape == current[key.split(":", 1)[1]].shape, key
        if dtype != np.float16:  # half precision moments may well be kept in single precision
            assert array.dtype == dtype, key


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_when_the_average_equals_the_current_weights_nothing_moves(name):
    current = _w(w=X)

    weights, _ = OPTIMIZERS[name](current, _w(w=X), state={})

    np.testing.assert_array_equal(weights["w"], X)


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_half_precision_moments_are_computed_in_single_precision(name):
    # Δ = 1e-4: Δ² = 1e-8 is below float16's smallest subnormal (6e-8), so a float16 v is 0
    # and the step is η·m/τ instead of η·m/(√v + τ): 10% too large for FedAdagrad, 1% for
    # FedAdam and FedYogi (whose v then stays 0 round after round).
    current16, average16 = _w(np.float16, w=[0.0]), _w(np.float16, w=[1e-4])
    current32 = {"w": current16["w"].astype(np.float32)}
    average32 = {"w": average16["w"].astype(np.float32)}
    optimizer = ADAPTIVE[name]

    half, _ = optimizer(current16, average16, state={})
    single, _ = optimizer(current32, average32, state={})

    assert half["w"].dtype == np.float16
    np.testing.assert_allclose(half["w"].astype(np.float32), single["w"], rtol=2e-3)
