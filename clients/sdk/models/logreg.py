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
    Tabular,
    Weights,
    check_dim,
    dim_of,
    evaluate_tabular,
    log_loss,
    sigmoid,
    spec,
    train_tabular,
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


def train(
    weights: Mapping[str, np.ndarray],
    data: Any,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    proximal_mu: float = 0.0,
    seed: int = 0,
    local: None = None,
) -> tuple[Weights, dict[str, float], None]:
    """Mini-batch SGD from ``weights``; FedProx pulls towards them with strength ``proximal_mu``.

    Returns new float32 weights, their metrics on ``data`` and ``None`` (no local state).
    """
    return train_tabular(
        weights,
        data,
        specs=_specs(weights),
        loss_and_grads=_loss_and_grads,
        logits=_logits,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        proximal_mu=proximal_mu,
        seed=seed,
        local=local,
    )


def evaluate(
    weights: Mapping[str, np.ndarray], data: Any, *, local: None = None
) -> dict[str, float]:
    """``loss`` (mean log-loss), ``accuracy`` (at p = 0.5) and ``auc`` (NaN with one class)."""
    return evaluate_tabular(weights, data, specs=_specs(weights), logits=_logits, local=local)


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
