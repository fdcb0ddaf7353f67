"""The merchant-side model templates (clients/sdk/models): pure numpy, no database.

Every template is checked for the shared contract — specs describe init, training lowers the
loss, inputs stay untouched (even read-only), results are deterministic, analytic gradients
match finite differences, FedProx pulls towards the global weights — then for what is special
to it: matrix factorisation's local state and untouched items, the CTR model's sparse rows,
and the SDK trainer built by make_trainer.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from clients.sdk.models import TEMPLATES, ctr, logreg, make_trainer, mf, mlp
from clients.sdk.models._common import SparseRows, Tabular, auc
from clients.sdk.training import EvalResult, TrainResult

# --- data shapes, as the portal's dataset objects duck-type them -----------------------------


@dataclass(frozen=True)
class TabularData:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class CategoricalData:
    x_num: np.ndarray
    x_cat: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class RatingsData:
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    n_users: int
    n_items: int


def _tabular(seed: int, n: int = 240, d: int = 4) -> TabularData:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    logits = x @ np.linspace(2.0, -1.0, d) + 0.3
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-logits))
    return TabularData(x.astype(np.float32), y.astype(np.float32))


USED_BUCKETS = 40  # of 64: buckets 40..63 never occur in the CTR data


def _categorical(seed: int, n: int = 300) -> CategoricalData:
    rng = np.random.default_rng(seed)
    x_num = rng.standard_normal((n, 3))
    x_cat = np.stack([rng.integers(0, 20, n), rng.integers(20, USED_BUCKETS, n)], axis=1)
    effect = np.linspace(-2.0, 2.0, USED_BUCKETS)
    logits = x_num[:, 0] - x_num[:, 1] + effect[x_cat[:, 0]] + effect[x_cat[:, 1]]
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-logits))
    return CategoricalData(x_num.astype(np.float32), x_cat.astype(np.int64), y.astype(np.float32))


RATED_ITEMS = 30  # of 40: items 30..39 are never rated


def _ratings(seed: int, n: int = 600, n_users: int = 30) -> RatingsData:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, RATED_ITEMS, n)
    taste = rng.standard_normal((n_users, 2)) @ rng.standard_normal((2, 40))
    ratings = np.clip(np.round(3.5 + taste[users, items] + 0.3 * rng.standard_normal(n)), 1, 5)
    return RatingsData(
        users.astype(np.int64), items.astype(np.int64), ratings.astype(np.float32), n_users, 40
    )


@dataclass(frozen=True)
class Case:
    dims: dict[str, int]
    data: Callable[[int], Any]
    hints: dict[str, Any]  # epochs, learning_rate, batch_size for the tests' short runs
    loss: str  # the metric that training lowers


CASES: dict[str, Case] = {
    "logreg": Case(
        {"n_features": 4}, _tabular, {"epochs": 5, "learning_rate": 0.3, "batch_size": 16}, "loss"
    ),
    "mlp": Case(
        {"n_features": 4, "hidden": 8},
        _tabular,
        {"epochs": 10, "learning_rate": 0.1, "batch_size": 16},
        "loss",
    ),
    "ctr": Case(
        {"n_numeric": 3, "n_categorical": 2, "buckets": 64, "embedding_dim": 4, "hidden": 8},
        _categorical,
        {"epochs": 10, "learning_rate": 0.1, "batch_size": 32},
        "loss",
    ),
    "mf": Case(
        {"n_items": 40, "k": 4},
        _ratings,
        {"epochs": 10, "learning_rate": 0.02, "batch_size": 32},
        "rmse",
    ),
}
NAMES = list(CASES)


def _setup(name: str, seed: int = 0) -> tuple[Any, dict[str, np.ndarray], Any, Case]:
    case = CASES[name]
    return TEMPLATES[name], TEMPLATES[name].init(seed=seed, **case.dims), case.data(seed), case


def _train(module, weights, data, case: Case, **overrides):
    return module.train(weights, data, **{**case.hints, **overrides})


def _initial_local(module, data, seed: int = 0):
    if module is mf:
        return mf.init_local(seed=seed, n_users=data.n_users, k=CASES["mf"].dims["k"])
    return None


def _read_only(tree):
    """A deep copy whose arrays refuse writes (like the codec's memory-mapped weights)."""
    if tree is None:
        return None
    tree = copy.deepcopy(tree)
    arrays = tree.values() if isinstance(tree, dict) else vars(tree).values()
    for value in arrays:
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return tree


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in b) ** 0.5)


# --- the shared contract ---------------------------------------------------------------------


def test_registry_holds_the_four_templates_with_the_same_api():
    assert set(TEMPLATES) == {"logreg", "mlp", "ctr", "mf"}
    for module in TEMPLATES.values():
        for function in ("tensor_specs", "init", "train", "evaluate", "_loss_and_grads"):
            assert callable(getattr(module, function))
        assert {"epochs", "learning_rate", "batch_size"} <= set(module.DEFAULT_HINTS)


@pytest.mark.parametrize("name", NAMES)
def test_specs_describe_exactly_what_init_returns(name):
    module, weights, _, case = _setup(name)
    specs = module.tensor_specs(**case.dims)
    assert [s["name"] for s in specs] == list(weights)
    for s in specs:
        assert s["dtype"] == "float32" and s["name"].isidentifier()
        assert weights[s["name"]].dtype == np.float32
        assert list(weights[s["name"]].shape) == s["shape"]
    again = module.init(seed=0, **case.dims)
    other = module.init(seed=1, **case.dims)
    assert all(np.array_equal(weights[k], again[k]) for k in weights)
    assert any(not np.array_equal(weights[k], other[k]) for k in weights)


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_the_loss_and_returns_float32_tensors_of_the_specs(name):
    module, weights, data, case = _setup(name)
    before = module.evaluate(weights, data, local=_initial_local(module, data))[case.loss]
    new, metrics, _ = _train(module, weights, data, case)
    assert metrics[case.loss] < 0.8 * before
    specs = module.tensor_specs(**case.dims)
    assert list(new) == [s["name"] for s in specs]
    assert all(new[s["name"]].dtype == np.float32 for s in specs)
    assert all(list(new[s["name"]].shape) == s["shape"] for s in specs)


@pytest.mark.parametrize("name", NAMES)
def test_training_reads_its_inputs_without_writing_them(name):
    module, weights, data, case = _setup(name)
    local = _initial_local(module, data)
    frozen_weights, frozen_data, frozen_local = map(_read_only, (weights, data, local))
    new, _, new_local = _train(
        module, frozen_weights, frozen_data, case, proximal_mu=0.1, local=frozen_local
    )
    for key, array in weights.items():
        assert np.array_equal(frozen_weights[key], array)
        assert not np.shares_memory(new[key], frozen_weights[key])
    for key, array in vars(data).items():
        assert np.array_equal(getattr(frozen_data, key), array)
    if local is not None:
        assert all(np.array_equal(frozen_local[k], local[k]) for k in local)
        assert not any(np.shares_memory(new_local[k], frozen_local[k]) for k in local)


@pytest.mark.parametrize("name", NAMES)
def test_training_is_deterministic_given_the_seed(name):
    module, weights, data, case = _setup(name)
    first, metrics, local = _train(module, weights, data, case, seed=7)
    again, metrics_again, local_again = _train(module, weights, data, case, seed=7)
    other, _, _ = _train(module, weights, data, case, seed=8)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert metrics == metrics_again
    if local is not None:
        assert all(np.array_equal(local[k], local_again[k]) for k in local)
    assert any(not np.array_equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", NAMES)
def test_zero_epochs_give_back_the_weights(name):
    module, weights, data, case = _setup(name)
    new, _, _ = _train(module, weights, data, case, epochs=0)
    assert all(np.array_equal(new[k], weights[k]) for k in weights)


@pytest.mark.parametrize("name", NAMES)
def test_proximal_mu_pulls_the_update_towards_the_global_weights(name):
    module, weights, data, case = _setup(name)
    free = _distance(_train(module, weights, data, case, proximal_mu=0.0)[0], weights)
    pulled = _distance(_train(module, weights, data, case, proximal_mu=1.0)[0], weights)
    pinned = _distance(_train(module, weights, data, case, proximal_mu=1e6)[0], weights)
    assert pinned < 1e-2 * free
    assert pinned < pulled < free


@pytest.mark.parametrize("name", NAMES)
def test_malformed_weights_and_hints_are_refused(name):
    module, weights, data, case = _setup(name)
    first = next(iter(weights))
    missing = {k: v for k, v in weights.items() if k != first}
    extra = {**weights, "surplus": np.zeros(1, np.float32)}
    reshaped = {**weights, first: np.zeros(weights[first].size + 1, np.float32)}
    poisoned = {**weights, first: np.full_like(weights[first], np.nan)}
    for bad in (missing, extra, reshaped, poisoned):
        with pytest.raises(ValueError):
            _train(module, bad, data, case)
    for hint in ({"epochs": -1}, {"learning_rate": 0.0}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            _train(module, weights, data, case, **hint)
    with pytest.raises(ValueError):
        _train(module, weights, data, case, proximal_mu=-1.0)


# --- analytic gradients against finite differences -------------------------------------------


def _tiny(name: str) -> tuple[dict[str, np.ndarray], Any, Callable]:
    """float64 weights (biases nudged off zero), a small batch, and the loss function."""
    rng = np.random.default_rng(3)
    module = TEMPLATES[name]
    if name == "mf":
        weights = mf.init(seed=1, n_items=6, k=3) | mf.init_local(seed=2, n_users=4, k=3)
        batch = mf.Batch(
            users=np.array([0, 1, 1, 3, 0, 2]),
            items=np.array([5, 0, 5, 2, 5, 1]),
            ratings=np.array([4.0, 2.0, 5.0, 1.0, 3.0, 4.0]),
        )
    elif name == "ctr":
        weights = ctr.init(
            seed=1, n_numeric=2, n_categorical=3, buckets=7, embedding_dim=2, hidden=4
        )
        batch = ctr.Batch(
            x_num=rng.standard_normal((5, 2)),
            x_cat=rng.integers(0, 7, (5, 3)),
            y=np.array([1.0, 0.0, 1.0, 1.0, 0.0]),
        )
    else:
        dims = {"n_features": 3} | ({"hidden": 5} if name == "mlp" else {})
        weights = module.init(seed=1, **dims)
        batch = Tabular(rng.standard_normal((6, 3)), np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]))
    weights = {
        k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape) for k, v in weights.items()
    }
    return weights, batch, module._loss_and_grads


@pytest.mark.parametrize("name", NAMES)
def test_analytic_gradients_match_finite_differences(name):
    weights, batch, loss_and_grads = _tiny(name)
    loss, grads = loss_and_grads(weights, batch)
    assert set(grads) == set(weights)
    eps = 1e-6
    for key, array in weights.items():
        grad = grads[key]
        if isinstance(grad, SparseRows):
            grad = grad.dense(array.shape[0])
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            plus, minus = copy.deepcopy(weights), copy.deepcopy(weights)
            plus[key][index] += eps
            minus[key][index] -= eps
            numeric[index] = (loss_and_grads(plus, batch)[0] - loss_and_grads(minus, batch)[0]) / (
                2 * eps
            )
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=key)
    assert loss == pytest.approx(loss_and_grads(weights, batch)[0])


# --- logistic regression and MLP -------------------------------------------------------------


def test_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.4).astype(float)
    scores = np.round(rng.random(200) + 0.3 * y, 1)  # many ties
    pos, neg = scores[y == 1], scores[y == 0]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert auc(y, scores) == pytest.approx(pairs.mean())
    assert auc(np.array([0.0, 1.0]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.ones(3), np.arange(3.0)))


def test_logreg_metrics_by_hand():
    weights = {"weight": np.array([1.0, 0.0], np.float32), "bias": np.zeros(1, np.float32)}
    data = TabularData(
        np.array([[2.0, 5.0], [-1.0, 5.0], [0.5, 5.0]], np.float32),
        np.array([1.0, 1.0, 0.0], np.float32),
    )
    metrics = logreg.evaluate(weights, data)
    z, y = np.array([2.0, -1.0, 0.5]), np.array([1.0, 1.0, 0.0])
    p = 1.0 / (1.0 + np.exp(-z))
    assert metrics["loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["auc"] == pytest.approx(0.5)


def test_mlp_learns_xor_which_logistic_regression_cannot():
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 1.0], size=(400, 2)) + 0.1 * rng.standard_normal((400, 2))
    data = TabularData(x.astype(np.float32), (x[:, 0] * x[:, 1] > 0).astype(np.float32))
    hints = {"epochs": 40, "learning_rate": 0.1, "batch_size": 16}
    _, net, _ = mlp.train(mlp.init(seed=0, n_features=2, hidden=16), data, **hints)
    _, linear, _ = logreg.train(logreg.init(seed=0, n_features=2), data, **hints)
    assert net["auc"] > 0.98
    assert linear["auc"] < 0.65


# --- wide & deep CTR -------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_ctr_leaves_buckets_the_data_never_uses_untouched(mu):
    module, weights, data, case = _setup("ctr")
    new, _, _ = _train(module, weights, data, case, proximal_mu=mu)
    for table in ("embedding", "wide_categorical"):
        assert np.array_equal(new[table][USED_BUCKETS:], weights[table][USED_BUCKETS:])
        changed = np.any((new[table] != weights[table]).reshape(64, -1), axis=1)
        assert changed[:USED_BUCKETS].all()


# --- matrix factorisation --------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_mf_returns_items_nobody_rated_exactly_unchanged(mu):
    module, weights, data, case = _setup("mf")
    new, _, _ = _train(module, weights, data, case, proximal_mu=mu)
    for table in ("item_factors", "item_bias"):
        assert np.array_equal(new[table][RATED_ITEMS:], weights[table][RATED_ITEMS:])
        assert not np.array_equal(new[table][:RATED_ITEMS], weights[table][:RATED_ITEMS])


def test_mf_local_state_stays_out_of_the_global_weights_and_round_trips():
    module, weights, data, case = _setup("mf")
    new, _, local = _train(module, weights, data, case, seed=5)
    assert set(new) == {"item_factors", "item_bias", "global_bias"}
    assert set(local) == {"user_factors", "user_bias"}
    assert local["user_factors"].shape == (data.n_users, 4)
    assert all(a.dtype == np.float32 for a in local.values())
    # local=None starts from init_local with the same seed
    seeded = mf.init_local(seed=5, n_users=data.n_users, k=4)
    explicit, _, explicit_local = _train(module, weights, data, case, seed=5, local=seeded)
    assert all(np.array_equal(new[k], explicit[k]) for k in new)
    assert all(np.array_equal(local[k], explicit_local[k]) for k in local)
    # the next round continues from the returned local state: users already fit
    _, resumed, _ = _train(module, new, data, case, epochs=1, local=local)
    _, restarted, _ = _train(module, new, data, case, epochs=1)
    assert resumed["rmse"] < restarted["rmse"]
    with pytest.raises(ValueError):
        _train(module, weights, data, case, local={"user_factors": local["user_factors"]})


def test_mf_evaluate_clips_predictions_and_treats_missing_local_state_as_cold_start():
    weights = {
        "item_factors": np.zeros((3, 2), np.float32),
        "item_bias": np.array([0.0, 10.0, -10.0], np.float32),
        "global_bias": np.array([3.0], np.float32),
    }
    local = {
        "user_factors": np.zeros((2, 2), np.float32),
        "user_bias": np.array([1.0, 0.0], np.float32),
    }
    data = RatingsData(
        users=np.array([0, 1, 1, 0]),
        items=np.array([0, 1, 2, 0]),
        ratings=np.array([4.0, 5.0, 1.0, 4.0], np.float32),
        n_users=2,
        n_items=3,
    )
    # predictions 4, 13 -> 5, -7 -> 1, 4: all exact
    assert mf.evaluate(weights, data, local=local) == {"rmse": 0.0, "mae": 0.0}
    # without local state the user bias is unknown: 3, 5, 1, 3
    assert mf.evaluate(weights, data) == pytest.approx({"rmse": 0.5**0.5, "mae": 0.5})
    with pytest.raises(ValueError):
        mf.evaluate(weights, replace(data, items=np.array([0, 1, 2, 3])))


def test_mf_fedavg_of_two_merchants_keeps_items_neither_rated():
    module, weights, _, case = _setup("mf")
    updates = []
    for seed in (1, 2):
        data = _ratings(seed)
        new, _, _ = _train(module, weights, data, case, seed=seed)
        updates.append((new, data.ratings.size))
    total = sum(n for _, n in updates)
    for key in weights:
        average = sum(n / total * u[key].astype(np.float64) for u, n in updates)
        assert np.array_equal(average.astype(np.float32)[RATED_ITEMS:], weights[key][RATED_ITEMS:])


# --- make_trainer ----------------------------------------------------------------------------


def _provider(name: str) -> Callable[[], tuple[Any, Any]]:
    data = CASES[name].data
    return lambda: (data(0), data(1))


@pytest.mark.parametrize("name", NAMES)
def test_make_trainer_reports_examples_and_held_out_metrics(name):
    module, weights, _, case = _setup(name)
    trainer = make_trainer(name, _provider(name), seed=10, **case.dims)
    hints = {**case.hints, "proximal_mu": 0.0, "round": 2}
    result = trainer(weights, hints)
    assert isinstance(result, TrainResult)
    train_data, test_data = _provider(name)()
    expected, metrics, local = module.train(weights, train_data, **case.hints, seed=12)
    assert all(np.array_equal(result.weights[k], expected[k]) for k in expected)
    assert result.num_examples == (train_data.ratings if name == "mf" else train_data.y).size
    test = module.evaluate(expected, test_data, local=local)
    assert result.metrics == {**metrics, **{f"test_{k}": v for k, v in test.items()}}
    assert f"test_{case.loss}" in result.metrics
    evaluation = trainer.evaluate(result.weights)
    assert isinstance(evaluation, EvalResult)
    assert evaluation.num_examples == (test_data.ratings if name == "mf" else test_data.y).size
    assert evaluation.metrics == test


def test_make_trainer_keeps_mf_local_state_between_rounds():
    _, weights, _, case = _setup("mf")
    trainer = make_trainer("mf", _provider("mf"), n_items=40, k=4)
    first = trainer(weights, {**case.hints, "round": 0})
    second = trainer(first.weights, {**case.hints, "round": 1})
    train_data, test_data = _provider("mf")()
    w1, _, local = mf.train(weights, train_data, **case.hints, seed=0)
    w2, _, local = mf.train(w1, train_data, **case.hints, seed=1, local=local)
    assert all(np.array_equal(second.weights[k], w2[k]) for k in w2)
    assert second.metrics["test_rmse"] == pytest.approx(
        mf.evaluate(w2, test_data, local=local)["rmse"]
    )
    assert trainer.evaluate(w2).metrics == mf.evaluate(w2, test_data, local=local)


def test_make_trainer_fills_missing_hints_and_accepts_json_spellings():
    _, weights, _, _ = _setup("logreg")
    trainer = make_trainer("logreg", _provider("logreg"), seed="1", n_features="4")
    defaults = trainer(weights, {"round": 0})
    train_data, _ = _provider("logreg")()
    expected, _, _ = logreg.train(weights, train_data, **logreg.DEFAULT_HINTS, seed=1)
    assert all(np.array_equal(defaults.weights[k], expected[k]) for k in expected)
    spelled = trainer(
        weights,
        {
            "epochs": 2.0,
            "learning_rate": "0.1",
            "batch_size": 64,
            "round": "0",
            "proximal_mu": None,
        },
    )
    assert all(np.array_equal(spelled.weights[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="epochs"):
        trainer(weights, {"epochs": 1.5})


def test_make_trainer_refuses_unknown_templates_and_mismatched_weights():
    with pytest.raises(ValueError, match="unknown template"):
        make_trainer("xgboost", _provider("logreg"))
    trainer = make_trainer("logreg", _provider("logreg"), n_features=4)
    with pytest.raises(ValueError, match="do not match"):
        trainer(logreg.init(n_features=5), {})


def test_make_trainer_leaves_out_an_undefined_auc():
    one_class = TabularData(np.ones((8, 4), np.float32), np.zeros(8, np.float32))
    trainer = make_trainer("logreg", lambda: (_tabular(0), one_class))
    result = trainer(logreg.init(n_features=4), {})
    assert "auc" in result.metrics and "test_auc" not in result.metrics
    assert "test_loss" in result.metrics


# --- boundaries ------------------------------------------------------------------------------


def test_the_models_import_nothing_from_django_or_the_portal():
    code = (
        "import sys, clients.sdk.models; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'django', 'flportal', 'rounds'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_portals_templates_point_at_these_modules():
    from rounds.templates import TEMPLATES as PORTAL_TEMPLATES
    from rounds.templates import template_dims, template_init, template_tensors

    for template in PORTAL_TEMPLATES.values():
        module = TEMPLATES[template.module]
        dims = template_dims(template, {k: v or 3 for k, v in template.dims.items()})
        specs = template_tensors(template, dims)
        weights = template_init(template, dims, seed=0)
        assert [s["name"] for s in specs] == list(weights)
        assert module.DEFAULT_HINTS == template.hints
