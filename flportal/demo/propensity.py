"""Purchase-propensity logistic regression in plain numpy, plus an SDK trainer.

The model is ``p = sigmoid(x @ weight + bias)`` over :data:`FEATURE_NAMES`.
Weights travel as a ``{"weight": (d,), "bias": (1,)}`` mapping of float32
arrays, described by :data:`TENSOR_SPECS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from clients.sdk.training import TrainResult
from flportal.demo.data import FEATURE_NAMES, Shard, partition

__all__ = [
    "TENSOR_SPECS",
    "TrainResult",
    "evaluate",
    "init_weights",
    "make_trainer",
    "predict_proba",
    "train_local",
]

NUM_FEATURES = len(FEATURE_NAMES)

TENSOR_SPECS: list[dict] = [
    {"name": "weight", "shape": [NUM_FEATURES], "dtype": "float32"},
    {"name": "bias", "shape": [1], "dtype": "float32"},
]

_EPS = 1e-7

# Defaults used by make_trainer when the server sends no hint.
DEFAULT_HINTS: dict[str, Any] = {
    "epochs": 1,
    "learning_rate": 0.1,
    "batch_size": 64,
    "proximal_mu": 0.0,
    "round": 0,
}


# --- model -------------------------------------------------------------------


def _params(weights: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Validate ``weights`` against TENSOR_SPECS and return ``(w, b)`` as float64."""
    expected = {spec["name"] for spec in TENSOR_SPECS}
    if set(weights) != expected:
        raise ValueError(f"weights must have exactly {sorted(expected)}, got {sorted(weights)}")
    arrays = {}
    for spec in TENSOR_SPECS:
        array = np.asarray(weights[spec["name"]])
        if list(array.shape) != spec["shape"]:
            raise ValueError(
                f"{spec['name']} must have shape {spec['shape']}, got {list(array.shape)}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{spec['name']} must be floating point, got {array.dtype}")
        arrays[spec["name"]] = array.astype(np.float64)
    return arrays["weight"], float(arrays["bias"][0])


def _features(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != NUM_FEATURES:
        raise ValueError(f"x must have shape (n, {NUM_FEATURES}), got {x.shape}")
    return x


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -z))


def init_weights(*, seed: int = 0) -> dict[str, np.ndarray]:
    """Small random-normal weight vector and a zero bias, float32."""
    rng = np.random.default_rng(seed)
    return {
        "weight": (rng.standard_normal(NUM_FEATURES) * 0.01).astype(np.float32),
        "bias": np.zeros(1, dtype=np.float32),
    }


def predict_proba(weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Probability of ``reordered == 1`` for each row of ``x`` (float64)."""
    w, b = _params(weights)
    return _sigmoid(_features(x) @ w + b)


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the rank-sum statistic, averaging ranks over ties; NaN if one class."""
    positives = y > 0.5
    n_pos = int(positives.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Average 1-based rank of each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.shape[0]]))
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    rank_sum = ranks[positives].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate(weights: Mapping[str, np.ndarray], shard: Shard) -> dict[str, float]:
    """Mean BCE (clipped probabilities), accuracy at 0.5 and ROC AUC on ``shard``."""
    y = np.asarray(shard.y, dtype=np.float64)
    if y.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty shard")
    p = predict_proba(weights, shard.x)
    clipped = np.clip(p, _EPS, 1.0 - _EPS)
    loss = -np.mean(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped))
    accuracy = np.mean((p >= 0.5) == (y > 0.5))
    return {"loss": float(loss), "accuracy": float(accuracy), "auc": _auc(y, p)}


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
    """Mini-batch SGD on BCE from ``weights``; optional FedProx term ``mu/2*||w - w0||^2``.

    Returns new float32 arrays under the input's names; inputs are not modified.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not proximal_mu >= 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    w_global, b_global = _params(weights)
    x_all = _features(shard.x).astype(np.float64)
    y_all = np.asarray(shard.y, dtype=np.float64)
    n = y_all.shape[0]
    if n == 0 or x_all.shape[0] != n:
        raise ValueError(
            f"shard must be non-empty with matching x/y rows, got {x_all.shape[0]}/{n}"
        )

    rng = np.random.default_rng(seed)
    w, b = w_global.copy(), b_global
    lr, mu = float(learning_rate), float(proximal_mu)
    for _ in range(int(epochs)):
        perm = rng.permutation(n)
        x_epoch, y_epoch = x_all[perm], y_all[perm]
        for start in range(0, n, batch_size):
            xb = x_epoch[start : start + batch_size]
            residual = _sigmoid(xb @ w + b) - y_epoch[start : start + batch_size]
            scale = 1.0 / residual.shape[0]
            grad_w = (residual @ xb) * scale
            grad_b = residual.sum() * scale
            if mu:
                grad_w += mu * (w - w_global)
                grad_b += mu * (b - b_global)
            w -= lr * grad_w
            b -= lr * grad_b

    new = {"weight": w.astype(np.float32), "bias": np.array([b], dtype=np.float32)}
    return {name: new[name] for name in weights}


# --- SDK trainer ---------------------------------------------------------------


def _as_int(name: str, value: Any) -> int:
    """Coerce CLI/JSON input (``"3"``, ``3``, ``3.0``) to int, rejecting anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        if isinstance(value, str):
            return int(value.strip())
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def make_trainer(
    *, shop: int | str, shops: int | str, seed: int | str = 0
) -> Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], TrainResult]:
    """Trainer for 0-based ``shop`` of ``partition(shops=shops, seed=seed)``.

    The callable takes ``(weights, hints)``; hints may set ``epochs``,
    ``learning_rate``, ``batch_size``, ``proximal_mu`` and ``round`` (the SGD
    seed is ``seed + round``).
    """
    shop_i, shops_i, seed_i = _as_int("shop", shop), _as_int("shops", shops), _as_int("seed", seed)
    if shops_i < 1:
        raise ValueError(f"shops must be at least 1, got {shops_i}")
    if not 0 <= shop_i < shops_i:
        raise ValueError(f"shop must satisfy 0 <= shop < {shops_i}, got {shop_i}")
    shard = partition(shops=shops_i, seed=seed_i)[0][shop_i]

    def train(weights: Mapping[str, np.ndarray], hints: Mapping[str, Any]) -> TrainResult:
        def hint(key: str) -> Any:
            value = hints.get(key) if hints else None
            return DEFAULT_HINTS[key] if value is None else value

        new_weights = train_local(
            weights,
            shard,
            epochs=_as_int("epochs", hint("epochs")),
            learning_rate=_as_float("learning_rate", hint("learning_rate")),
            batch_size=_as_int("batch_size", hint("batch_size")),
            proximal_mu=_as_float("proximal_mu", hint("proximal_mu")),
            seed=seed_i + _as_int("round", hint("round")),
        )
        metrics = evaluate(new_weights, shard)
        return TrainResult(weights=new_weights, num_examples=len(shard), metrics=metrics)

    return train
