"""Logistic regression: ``p = sigmoid(x @ weight + bias)``, trained by mini-batch SGD on log-loss.

Global tensors: ``weight`` (n_features,) and ``bias`` (1,) — the same names as the demo
propensity model, so its weights load here. Data: ``data.x`` float (n, n_features) and
``data.y`` 0/1 (n,). No local state.
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

# Local-training hints used when a round sends none (the portal's template defaults).
DEFAULT_HINTS: dict[str, Any] = {"epochs": 2, "learning_rate": 0.1, "batch_size": 64}


def tensor_specs(*, n_features: int) -> list[dict[str, Any]]:
    n_features = check_dim("n_features", n_features)
    return [spec("weight", n_features), spec("bias", 1)]


def init(*, seed: int = 0, n_features: int) -> Weights:
    """Small random-normal weights (std 0.01) and a zero bias."""
    n_features = check_dim("n_features", n_features)
    rng = np.random.default_rng(seed)
    return {
        "weight": (rng.standard_normal(n_features) * 0.01).astype(np.float32),
        "bias": np.zeros(1, dtype=np.float32),
    }


def _specs(weights: Mapping[str, Any]) -> list[dict[str, Any]]:
    return tensor_specs(n_features=dim_of(weights, "weight", 0))


def _logits(params: Weights, x: np.ndarray) -> np.ndarray:
    return x @ params["weight"] + params["bias"][0]


def _loss_and_grads(weights: Weights, batch: Tabular) -> tuple[float, Weights]:
    """Mean log-loss of ``batch`` and its exact gradient (float64 in, float64 out)."""
    z = _logits(weights, batch.x)
    residual = (sigmoid(z) - batch.y) / batch.y.shape[0]
    return log_loss(z, batch.y), {
        "weight": batch.x.T @ residual,
        "bias": np.array([residual.sum()]),
    }


_model = DenseClassifier(specs_of=_specs, logits=_logits, loss_and_grads=_loss_and_grads)
train = _model.train
evaluate = _model.evaluate
