"""A small multi-layer perceptron for binary targets: one ReLU hidden layer, sigmoid output.

``p = sigmoid(relu(x @ hidden_weight + hidden_bias) @ output_weight + output_bias)``, He
initialisation, plain mini-batch SGD on log-loss (FedAvg's own local solver: nothing but the
weights carries over between rounds). Data as for :mod:`clients.sdk.models.logreg`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from clients.sdk.models._common import (
    DenseClassifier,
    Tabular,
    Weights,
    check_dim,
    dim_of,
    log_loss,
    sigmoid,
    spec,
)

DEFAULT_HINTS: dict[str, Any] = {"epochs": 2, "learning_rate": 0.05, "batch_size": 64}


def tensor_specs(*, n_features: int, hidden: int = 32) -> list[dict[str, Any]]:
    n_features = check_dim("n_features", n_features)
    hidden = check_dim("hidden", hidden)
    return [
        spec("hidden_weight", n_features, hidden),
        spec("hidden_bias", hidden),
        spec("output_weight", hidden),
        spec("output_bias", 1),
    ]


def init(*, seed: int = 0, n_features: int, hidden: int = 32) -> Weights:
    """He-normal hidden layer (std sqrt(2 / n_features)), Glorot-scale output (std
    sqrt(1 / hidden)), zero biases."""
    n_features = check_dim("n_features", n_features)
    hidden = check_dim("hidden", hidden)
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n_features, hidden)) * np.sqrt(2.0 / n_features)
    w2 = rng.standard_normal(hidden) * np.sqrt(1.0 / hidden)
    return {
        "hidden_weight": w1.astype(np.float32),
        "hidden_bias": np.zeros(hidden, dtype=np.float32),
        "output_weight": w2.astype(np.float32),
        "output_bias": np.zeros(1, dtype=np.float32),
    }


def _specs(weights: Mapping[str, Any]) -> list[dict[str, Any]]:
    return tensor_specs(
        n_features=dim_of(weights, "hidden_weight", 0), hidden=dim_of(weights, "hidden_weight", 1)
    )


def _logits(params: Weights, x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ params["hidden_weight"] + params["hidden_bias"], 0.0)
    return h @ params["output_weight"] + params["output_bias"][0]


def _loss_and_grads(weights: Weights, batch: Tabular) -> tuple[float, Weights]:
    """Mean log-loss of ``batch`` and its exact gradient by back-propagation."""
    pre = batch.x @ weights["hidden_weight"] + weights["hidden_bias"]
    h = np.maximum(pre, 0.0)
    z = h @ weights["output_weight"] + weights["output_bias"][0]
    d_z = (sigmoid(z) - batch.y) / batch.y.shape[0]
    d_pre = np.outer(d_z, weights["output_weight"]) * (pre > 0.0)
    return log_loss(z, batch.y), {
        "hidden_weight": batch.x.T @ d_pre,
        "hidden_bias": d_pre.sum(axis=0),
        "output_weight": h.T @ d_z,
        "output_bias": np.array([d_z.sum()]),
    }


_model = DenseClassifier(specs_of=_specs, logits=_logits, loss_and_grads=_loss_and_grads)
train = _model.train
evaluate = _model.evaluate
