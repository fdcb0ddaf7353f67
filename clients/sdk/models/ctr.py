"""Click-through / purchase intent on numeric plus hashed categorical features: wide & deep, lite.

Each of the ``n_categorical`` fields holds a bucket id in ``[0, buckets)`` (already hashed, field
included, by the data pipeline). All fields share one table of embeddings and one table of wide
weights, indexed by bucket::

    wide  = x_num @ wide_numeric + sum_f wide_categorical[x_cat[:, f]]
    deep  = relu([x_num, embedding[x_cat[:, 0]], ..., embedding[x_cat[:, c-1]]] @ hidden_weight
                 + hidden_bias) @ output_weight
    p     = sigmoid(wide + deep + bias)

Training is proximal Adagrad on log-loss (the optimiser of the wide & deep paper's deep part,
suited to sparse features): its squared-gradient sums live only inside one ``train`` call.
Updates are row-sparse: a bucket that no example of the batch uses gets no write, so buckets a
merchant never sees come back bit-for-bit unchanged and FedAvg keeps their global value.

Data: ``data.x_num`` float (n, n_numeric), ``data.x_cat`` integer (n, n_categorical),
``data.y`` 0/1 (n,). No local state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.sdk.models._common import (
    SparseRows,
    Weights,
    batches,
    check_dim,
    check_training,
    check_weights,
    classification_metrics,
    dim_of,
    features,
    indices,
    labels,
    log_loss,
    no_local,
    proximal_update,
    sigmoid,
    sparse_rows,
    spec,
    to_float32,
)

DEFAULT_HINTS: dict[str, Any] = {"epochs": 2, "learning_rate": 0.05, "batch_size": 64}
ADAGRAD_INITIAL = 0.1  # starting value of the squared-gradient sums


@dataclass(frozen=True)
class Batch:
    x_num: np.ndarray  # float64 (n, n_numeric)
    x_cat: np.ndarray  # int64 (n, n_categorical)
    y: np.ndarray  # float64 (n,)

    def take(self, rows: np.ndarray) -> Batch:
        return Batch(self.x_num[rows], self.x_cat[rows], self.y[rows])


def tensor_specs(
    *,
    n_numeric: int,
    n_categorical: int,
    buckets: int = 4096,
    embedding_dim: int = 8,
    hidden: int = 32,
) -> list[dict[str, Any]]:
    n_numeric = check_dim("n_numeric", n_numeric, minimum=0)
    n_categorical = check_dim("n_categorical", n_categorical)
    buckets = check_dim("buckets", buckets)
    embedding_dim = check_dim("embedding_dim", embedding_dim)
    hidden = check_dim("hidden", hidden)
    return [
        spec("wide_numeric", n_numeric),
        spec("wide_categorical", buckets),
        spec("embedding", buckets, embedding_dim),
        spec("hidden_weight", n_numeric + n_categorical * embedding_dim, hidden),
        spec("hidden_bias", hidden),
        spec("output_weight", hidden),
        spec("bias", 1),
    ]


def init(
    *,
    seed: int = 0,
    n_numeric: int,
    n_categorical: int,
    buckets: int = 4096,
    embedding_dim: int = 8,
    hidden: int = 32,
) -> Weights:
    """Embeddings N(0, 0.05^2), He-normal hidden layer, Glorot-scale output, zero wide part."""
    specs = tensor_specs(
        n_numeric=n_numeric,
        n_categorical=n_categorical,
        buckets=buckets,
        embedding_dim=embedding_dim,
        hidden=hidden,
    )
    rng = np.random.default_rng(seed)
    fan_in = specs[3]["shape"][0]
    arrays = {
        "wide_numeric": np.zeros(n_numeric),
        "wide_categorical": np.zeros(buckets),
        "embedding": rng.standard_normal((buckets, embedding_dim)) * 0.05,
        "hidden_weight": rng.standard_normal((fan_in, hidden)) * np.sqrt(2.0 / fan_in),
        "hidden_bias": np.zeros(hidden),
        "output_weight": rng.standard_normal(hidden) * np.sqrt(1.0 / hidden),
        "bias": np.zeros(1),
    }
    return to_float32(arrays, specs)


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
    """Proximal Adagrad from ``weights``; returns new float32 weights, their metrics on
    ``data`` and ``None`` (no local state)."""
    check_training(
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, proximal_mu=proximal_mu
    )
    no_local(local)
    specs = _specs(weights)
    params = check_weights(weights, specs)
    batch = _batch(data, specs)
    anchor = {name: p.copy() for name, p in params.items()} if proximal_mu else {}
    active = np.unique(batch.x_cat) if proximal_mu else None
    sums = {name: np.full_like(p, ADAGRAD_INITIAL) for name, p in params.items()}
    rng = np.random.default_rng(seed)
    for rows in batches(batch.y.shape[0], batch_size, epochs, rng):
        _, grads = _loss_and_grads(params, batch.take(rows))
        for name, grad in grads.items():
            proximal_update(
                params[name],
                grad,
                learning_rate=learning_rate,
                anchor=anchor.get(name),
                mu=proximal_mu,
                active=active,
                sums=sums[name],
            )
    return to_float32(params, specs), _metrics(params, batch), None


def evaluate(
    weights: Mapping[str, np.ndarray], data: Any, *, local: None = None
) -> dict[str, float]:
    """``loss`` (mean log-loss), ``accuracy`` (at p = 0.5) and ``auc`` (NaN with one class)."""
    no_local(local)
    specs = _specs(weights)
    params = check_weights(weights, specs)
    return _metrics(params, _batch(data, specs))


def _specs(weights: Mapping[str, Any]) -> list[dict[str, Any]]:
    n_numeric = dim_of(weights, "wide_numeric", 0)
    embedding_dim = dim_of(weights, "embedding", 1)
    fan_in = dim_of(weights, "hidden_weight", 0)
    return tensor_specs(
        n_numeric=n_numeric,
        n_categorical=max(1, (fan_in - n_numeric) // max(1, embedding_dim)),
        buckets=dim_of(weights, "embedding", 0),
        embedding_dim=embedding_dim,
        hidden=dim_of(weights, "hidden_weight", 1),
    )


def _batch(data: Any, specs: list[dict[str, Any]]) -> Batch:
    n_numeric = specs[0]["shape"][0]
    buckets, embedding_dim = specs[2]["shape"]
    n_categorical = (specs[3]["shape"][0] - n_numeric) // embedding_dim
    x_num = features(data.x_num, "x_num", n_numeric)
    x_cat = indices(data.x_cat, "x_cat", buckets, ndim=2)
    if x_cat.shape != (x_num.shape[0], n_categorical):
        raise ValueError(f"x_cat must have shape ({x_num.shape[0]}, {n_categorical})")
    return Batch(x_num, x_cat, labels(data.y, x_num.shape[0]))


def _metrics(params: Weights, batch: Batch) -> dict[str, float]:
    return classification_metrics(_forward(params, batch)[0], batch.y)


def _forward(params: Weights, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, the deep part's input and its hidden pre-activations."""
    n = batch.y.shape[0]
    deep_in = np.concatenate([batch.x_num, params["embedding"][batch.x_cat].reshape(n, -1)], axis=1)
    pre = deep_in @ params["hidden_weight"] + params["hidden_bias"]
    wide = batch.x_num @ params["wide_numeric"] + params["wide_categorical"][batch.x_cat].sum(
        axis=1
    )
    deep = np.maximum(pre, 0.0) @ params["output_weight"]
    return wide + deep + params["bias"][0], deep_in, pre


def _loss_and_grads(
    weights: Weights, batch: Batch
) -> tuple[float, dict[str, np.ndarray | SparseRows]]:
    """Mean log-loss of ``batch`` and its exact gradient; the two bucket-indexed tables get
    :class:`SparseRows` gradients over the buckets the batch uses."""
    z, deep_in, pre = _forward(weights, batch)
    n, n_categorical = batch.x_cat.shape
    n_numeric = batch.x_num.shape[1]
    h = np.maximum(pre, 0.0)
    d_z = (sigmoid(z) - batch.y) / n
    d_pre = np.outer(d_z, weights["output_weight"]) * (pre > 0.0)
    d_embedded = (d_pre @ weights["hidden_weight"].T)[:, n_numeric:]
    flat_cat = batch.x_cat.reshape(-1)
    return log_loss(z, batch.y), {
        "wide_numeric": batch.x_num.T @ d_z,
        "wide_categorical": sparse_rows(flat_cat, np.repeat(d_z, n_categorical)),
        "embedding": sparse_rows(flat_cat, d_embedded.reshape(n * n_categorical, -1)),
        "hidden_weight": deep_in.T @ d_pre,
        "hidden_bias": d_pre.sum(axis=0),
        "output_weight": h.T @ d_z,
        "bias": np.array([d_z.sum()]),
    }
