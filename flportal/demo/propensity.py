"""The demo's purchase-propensity model: the SDK's ``logreg`` template on Instacart shops.

Everything here delegates to ``clients.sdk.models`` (the one implementation merchants run) and
``flportal.datasets.instacart``; it only adapts them to the demo's command-line trainer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from clients.sdk.models import as_float, as_int, logreg
from clients.sdk.models import make_trainer as sdk_make_trainer
from clients.sdk.training import Trainer, TrainResult
from flportal.datasets import instacart
from flportal.demo.data import FEATURE_NAMES, Shard

NUM_FEATURES = len(FEATURE_NAMES)
TENSOR_SPECS: list[dict[str, Any]] = logreg.tensor_specs(n_features=NUM_FEATURES)

__all__ = [
    "TENSOR_SPECS",
    "TrainResult",
    "evaluate",
    "init_weights",
    "make_trainer",
    "predict_proba",
    "train_local",
]


def init_weights(*, seed: int = 0) -> dict[str, np.ndarray]:
    return logreg.init(seed=seed, n_features=NUM_FEATURES)


def predict_proba(weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    expected = {spec["name"]: tuple(spec["shape"]) for spec in TENSOR_SPECS}
    if set(weights) != set(expected):
        raise ValueError(f"weights must have exactly {sorted(expected)}, got {sorted(weights)}")
    for name, shape in expected.items():
        if np.shape(weights[name]) != shape:
            raise ValueError(f"{name} has shape {np.shape(weights[name])}, expected {shape}")
    logits = np.asarray(x, np.float64) @ np.asarray(weights["weight"], np.float64)
    logits += float(np.asarray(weights["bias"]).reshape(-1)[0])
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the logistic function, without overflow


def evaluate(weights: Mapping[str, np.ndarray], shard: Shard) -> dict[str, float]:
    return logreg.evaluate(weights, shard)


def train_local(
    weights: Mapping[str, np.ndarray],
    shard: Shard,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    new, _, _ = logreg.train(
        weights,
        shard,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        proximal_mu=proximal_mu,
        seed=seed,
    )
    return new


def make_trainer(
    *, shop: int | str, shops: int | str, seed: int | str = 0, pace: float | str = 0.0
) -> Trainer:
    """The SDK trainer of 0-based ``shop`` among ``shops`` Instacart shops (options arrive as
    strings from ``flportal-client --option``). It evaluates new versions on the shop's own
    held-out customers (federated evaluation). ``pace`` > 0 makes the shop take about that many
    seconds (0.5x to 1.5x) per round, like a real shop's training job, so that people can watch
    the updates arrive one by one."""
    shop_i, shops_i, seed_i = as_int("shop", shop), as_int("shops", shops), as_int("seed", seed)
    if shops_i < 1:
        raise ValueError(f"shops must be at least 1, got {shops_i}")
    if not 0 <= shop_i < shops_i:
        raise ValueError(f"shop must satisfy 0 <= shop < {shops_i}, got {shop_i}")
    chosen = instacart.split(shops=shops_i, seed=seed_i).shops[shop_i]
    trainer = sdk_make_trainer(
        "logreg", lambda: (chosen.train, chosen.test), seed=seed_i, n_features=NUM_FEATURES
    )
    seconds = as_float("pace", pace)
    return _paced(trainer, seconds, random.Random(seed_i * 1000 + shop_i)) if seconds else trainer


def _paced(trainer: Trainer, seconds: float, rng: random.Random) -> Trainer:
    def train(weights: Mapping[str, np.ndarray], hints: Mapping[str, Any]) -> TrainResult:
        time.sleep(seconds * rng.uniform(0.5, 1.5))
        return trainer(weights, hints)

    evaluate = getattr(trainer, "evaluate", None)
    if evaluate is not None:
        train.evaluate = evaluate  # type: ignore[attr-defined]
    return train
