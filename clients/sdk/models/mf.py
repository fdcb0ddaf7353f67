"""Federated matrix factorisation for ratings: item factors are shared, user factors stay home.

``rating ~ global_bias + user_bias[u] + item_bias[i] + user_factors[u] . item_factors[i]``

The classic federated collaborative-filtering split: the GLOBAL tensors are ``item_factors``
(n_items, k), ``item_bias`` (n_items,) and ``global_bias`` (1,); the LOCAL state is
``user_factors`` (n_users, k) and ``user_bias`` (n_users,) for the merchant's own customers. It
never leaves the merchant: :func:`train` takes it as ``local`` and returns the new one, and a
``local`` of ``None`` starts it from the seed.

Training is SGD on squared error with per-occurrence L2 (Funk / Koren): every rating moves its
user's and item's rows by ``learning_rate`` times its own gradient, vectorised over a batch
(duplicates add up), and moves the shared ``global_bias`` by ``learning_rate`` times the batch's
mean gradient. On the batch's mean objective (what :func:`_loss_and_grads` returns) that is a
step of ``learning_rate * batch_size`` for the rows and ``learning_rate`` for the global bias.
FedProx's proximal term covers the global tensors only, as a proximal step.

Items the merchant never rated are never written: they come back bit-for-bit equal to the
global weights it received. Under the portal's example-weighted FedAvg such an item's average is
then a convex combination of equal values — no drift from merchants that know nothing about it
(up to float32 rounding of the weighted sum). The flip side, inherent to FedAvg on sparse
updates: an item rated by one merchant only moves by that merchant's share of the examples.

Data: ``data.users`` integer local user index in [0, data.n_users), ``data.items`` integer
global item index in [0, n_items), ``data.ratings`` float (1-5 stars), ``data.n_users``.
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
    dim_of,
    indices,
    proximal_update,
    sparse_rows,
    spec,
    to_float32,
)

DEFAULT_HINTS: dict[str, Any] = {"epochs": 5, "learning_rate": 0.02, "batch_size": 64}
RATING_RANGE = (1.0, 5.0)  # predictions are clipped to it in evaluate()
L2 = 0.1  # per-occurrence L2 on the factors and biases of each rating's user and item
INIT_STD = 0.1  # factors start N(0, INIT_STD^2); biases at zero, global bias mid-range
GLOBAL = ("item_factors", "item_bias", "global_bias")
LOCAL = ("user_factors", "user_bias")


@dataclass(frozen=True)
class Batch:
    users: np.ndarray  # int64 (n,)
    items: np.ndarray  # int64 (n,)
    ratings: np.ndarray  # float64 (n,)

    def take(self, rows: np.ndarray) -> Batch:
        return Batch(self.users[rows], self.items[rows], self.ratings[rows])


def tensor_specs(*, n_items: int, k: int = 16) -> list[dict[str, Any]]:
    """The global tensors (what the portal aggregates)."""
    n_items, k = check_dim("n_items", n_items), check_dim("k", k)
    return [spec("item_factors", n_items, k), spec("item_bias", n_items), spec("global_bias", 1)]


def local_specs(*, n_users: int, k: int = 16) -> list[dict[str, Any]]:
    """The merchant-only tensors (never uploaded)."""
    n_users, k = check_dim("n_users", n_users), check_dim("k", k)
    return [spec("user_factors", n_users, k), spec("user_bias", n_users)]


def init(*, seed: int = 0, n_items: int, k: int = 16) -> Weights:
    """Item factors N(0, 0.1^2), zero item biases, the global bias mid-scale (3 stars)."""
    specs = tensor_specs(n_items=n_items, k=k)
    rng = np.random.default_rng(seed)
    arrays = {
        "item_factors": rng.standard_normal((n_items, k)) * INIT_STD,
        "item_bias": np.zeros(n_items),
        "global_bias": np.array([sum(RATING_RANGE) / 2.0]),
    }
    return to_float32(arrays, specs)


def init_local(*, seed: int = 0, n_users: int, k: int = 16) -> Weights:
    """User factors N(0, 0.1^2) and zero user biases."""
    specs = local_specs(n_users=n_users, k=k)
    rng = np.random.default_rng(seed)
    arrays = {
        "user_factors": rng.standard_normal((n_users, k)) * INIT_STD,
        "user_bias": np.zeros(n_users),
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
    local: Mapping[str, np.ndarray] | None = None,
    l2: float = L2,
) -> tuple[Weights, dict[str, float], Weights]:
    """SGD from the global ``weights`` and this merchant's ``local`` user state.

    Returns the new global weights (float32, :func:`tensor_specs` names only), ``rmse`` and
    ``mae`` on ``data``, and the new local state to pass back next round.
    """
    check_training(
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, proximal_mu=proximal_mu
    )
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    specs = _specs(weights)
    n_items, k = specs[0]["shape"]
    params = check_weights(weights, specs)
    batch, n_users = _batch(data, n_items)
    if local is None:
        local = init_local(seed=seed, n_users=n_users, k=k)
    user_specs = local_specs(n_users=n_users, k=k)
    params |= check_weights(local, user_specs)
    anchor = {name: params[name].copy() for name in GLOBAL} if proximal_mu else {}
    active = np.unique(batch.items) if proximal_mu else None
    for rows in batches(batch.ratings.shape[0], batch_size, epochs, np.random.default_rng(seed)):
        _, grads = _loss_and_grads(params, batch.take(rows), l2=l2)
        for name, grad in grads.items():
            proximal_update(
                params[name],
                grad,
                learning_rate=learning_rate * (1 if name == "global_bias" else rows.shape[0]),
                anchor=anchor.get(name),
                mu=proximal_mu if name in GLOBAL else 0.0,
                active=active,
            )
    return to_float32(params, specs), _metrics(params, batch), to_float32(params, user_specs)


def evaluate(
    weights: Mapping[str, np.ndarray], data: Any, *, local: Mapping[str, np.ndarray] | None = None
) -> dict[str, float]:
    """``rmse`` and ``mae`` of predictions clipped to :data:`RATING_RANGE`. Without ``local``
    every user is unknown (cold start): the prediction is ``global_bias + item_bias``."""
    specs = _specs(weights)
    n_items, k = specs[0]["shape"]
    params = check_weights(weights, specs)
    batch, n_users = _batch(data, n_items)
    if local is None:
        params |= {"user_factors": np.zeros((n_users, k)), "user_bias": np.zeros(n_users)}
    else:
        params |= check_weights(local, local_specs(n_users=n_users, k=k))
    return _metrics(params, batch)


def _specs(weights: Mapping[str, Any]) -> list[dict[str, Any]]:
    return tensor_specs(
        n_items=dim_of(weights, "item_factors", 0), k=dim_of(weights, "item_factors", 1)
    )


def _batch(data: Any, n_items: int) -> tuple[Batch, int]:
    n_users = check_dim("n_users", data.n_users)
    n_data_items = getattr(data, "n_items", n_items)
    if n_data_items != n_items:
        raise ValueError(f"data has n_items={n_data_items} but the model has {n_items}")
    users = indices(data.users, "users", n_users, ndim=1)
    items = indices(data.items, "items", n_items, ndim=1)
    ratings = np.asarray(data.ratings, dtype=np.float64)
    if not users.shape == items.shape == ratings.shape:
        raise ValueError("users, items and ratings must have the same length")
    if ratings.size == 0:
        raise ValueError("the data set is empty")
    if not np.isfinite(ratings).all():
        raise ValueError("ratings contain NaN or infinite values")
    return Batch(users, items, ratings), n_users


def _predict(params: Weights, batch: Batch) -> np.ndarray:
    u, i = batch.users, batch.items
    dot = np.einsum("nk,nk->n", params["user_factors"][u], params["item_factors"][i])
    return params["global_bias"][0] + params["user_bias"][u] + params["item_bias"][i] + dot


def _metrics(params: Weights, batch: Batch) -> dict[str, float]:
    error = np.clip(_predict(params, batch), *RATING_RANGE) - batch.ratings
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


def _loss_and_grads(
    weights: Weights, batch: Batch, *, l2: float = L2
) -> tuple[float, dict[str, np.ndarray | SparseRows]]:
    """Mean over the batch of ``(pred - r)^2 / 2 + l2/2 (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2)``
    and its exact gradient with respect to all five tensors (global and local); the row tables
    get :class:`SparseRows` gradients."""
    u, i = batch.users, batch.items
    n = batch.ratings.shape[0]
    p_u, q_i = weights["user_factors"][u], weights["item_factors"][i]
    b_u, b_i = weights["user_bias"][u], weights["item_bias"][i]
    error = weights["global_bias"][0] + b_u + b_i + np.einsum("nk,nk->n", p_u, q_i) - batch.ratings
    penalty = (p_u**2).sum(axis=1) + (q_i**2).sum(axis=1) + b_u**2 + b_i**2
    loss = float(np.mean(0.5 * error**2 + 0.5 * l2 * penalty))
    return loss, {
        "item_factors": sparse_rows(i, (error[:, None] * p_u + l2 * q_i) / n),
        "item_bias": sparse_rows(i, (error + l2 * b_i) / n),
        "global_bias": np.array([error.sum() / n]),
        "user_factors": sparse_rows(u, (error[:, None] * q_i + l2 * p_u) / n),
        "user_bias": sparse_rows(u, (error + l2 * b_u) / n),
    }
