"""What the model templates share: checks, batching, metrics and the proximal update rules.

Models compute in float64 on private copies and hand back float32. Embedding-like tables get
row-sparse gradients (:class:`SparseRows`) so that an update only ever writes the rows a batch
touched; the FedProx term is applied as a proximal step (see :func:`proximal_update`), only on rows
the merchant's data can reach, so rows it never sees come back bit-for-bit unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class SparseRows:
    """The gradient of a table that is zero except on ``rows`` (sorted, unique)."""

    rows: np.ndarray  # int64 (m,)
    values: np.ndarray  # float64 (m, *row_shape)

    def dense(self, n_rows: int) -> np.ndarray:
        out = np.zeros((n_rows, *self.values.shape[1:]), dtype=self.values.dtype)
        out[self.rows] = self.values
        return out


def sparse_rows(indices: np.ndarray, values: np.ndarray) -> SparseRows:
    """Sum per-example row gradients ``values[j]`` that belong to row ``indices[j]``."""
    rows, inverse = np.unique(indices, return_inverse=True)
    summed = np.zeros((rows.shape[0], *values.shape[1:]), dtype=np.float64)
    np.add.at(summed, inverse.reshape(-1), values)
    return SparseRows(rows, summed)


# --- checks -------------------------------------------------------------------------------


def spec(name: str, *shape: int) -> dict[str, Any]:
    return {"name": name, "shape": [int(d) for d in shape], "dtype": "float32"}


def check_dim(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def dim_of(weights: Mapping[str, Any], name: str, axis: int) -> int:
    """A model dimension read off one tensor's shape (the full check comes after)."""
    shape = np.shape(weights[name]) if name in weights else ()
    if len(shape) <= axis:
        raise ValueError(f"weights need a tensor {name!r} with at least {axis + 1} dimension(s)")
    return int(shape[axis])


def no_local(local: Any) -> None:
    if local is not None:
        raise ValueError("this model keeps no local state; pass local=None")


def check_weights(weights: Mapping[str, Any], specs: Sequence[Mapping[str, Any]]) -> Weights:
    """Exactly the specs' names and shapes, finite floats; returns float64 copies."""
    expected = [s["name"] for s in specs]
    if set(weights) != set(expected):
        raise ValueError(f"weights must have exactly {sorted(expected)}, got {sorted(weights)}")
    params: Weights = {}
    for s in specs:
        array = np.asarray(weights[s["name"]])
        if list(array.shape) != list(s["shape"]):
            raise ValueError(
                f"{s['name']} must have shape {list(s['shape'])}, got {list(array.shape)}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{s['name']} must be floating point, got {array.dtype}")
        if not np.isfinite(array).all():
            raise ValueError(f"{s['name']} contains NaN or infinite values")
        params[s["name"]] = array.astype(np.float64)  # always a copy
    return params


def to_float32(params: Mapping[str, np.ndarray], specs: Sequence[Mapping[str, Any]]) -> Weights:
    return {s["name"]: params[s["name"]].astype(np.float32) for s in specs}


def check_training(
    *, epochs: int, learning_rate: float, batch_size: int, proximal_mu: float
) -> None:
    check_dim("epochs", epochs, minimum=0)
    check_dim("batch_size", batch_size)
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
        raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")


def labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {y.shape}")
    if n == 0:
        raise ValueError("the data set is empty")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y must hold 0/1 labels")
    return y


def features(x: Any, name: str, d: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def indices(values: Any, name: str, upper: int, *, ndim: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} must be a {ndim}-d integer array, got {array.dtype} {array.shape}"
        )
    if array.size and (array.min() < 0 or array.max() >= upper):
        raise ValueError(f"{name} must lie in [0, {upper})")
    return array.astype(np.int64, copy=False)


@dataclass(frozen=True)
class Tabular:
    """A validated batch of dense features and 0/1 labels (float64)."""

    x: np.ndarray
    y: np.ndarray

    def take(self, rows: np.ndarray) -> Tabular:
        return Tabular(self.x[rows], self.y[rows])


def tabular(data: Any, n_features: int) -> Tabular:
    x = features(data.x, "x", n_features)
    return Tabular(x, labels(data.y, x.shape[0]))


# --- batching and updates -----------------------------------------------------------------


def batches(n: int, batch_size: int, epochs: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Row indices of each mini-batch: a fresh permutation per epoch, the last batch short."""
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def proximal_update(
    param: np.ndarray,
    grad: np.ndarray | SparseRows,
    *,
    learning_rate: float,
    anchor: np.ndarray | None = None,
    mu: float = 0.0,
    active: np.ndarray | None = None,
    sums: np.ndarray | None = None,
) -> None:
    """One step on ``param`` in place: SGD, or Adagrad when ``sums`` (the running sums of
    squared gradients, shaped like ``param``, updated in place) is given.

    With ``mu > 0`` the FedProx term ``mu/2 |p - a|^2`` is applied as its proximal step:
    ``p <- a + (p - rate*g - a) / (1 + rate*mu)``, the exact minimiser of the linearised loss plus
    the term (proximal gradient descent; proximal Adagrad with per-coordinate rates). It matches
    a gradient step on ``g + mu (p - a)`` to first order and is stable for any ``rate * mu``.

    For a :class:`SparseRows` gradient only rows are written: the gradient's rows, or with
    ``mu > 0`` every row in ``active`` (sorted; all rows this merchant's data can reach, a
    superset of ``grad.rows``), since rows touched earlier keep being pulled to the anchor.
    A row outside them is never written, so it comes back bit-for-bit unchanged.
    """
    if not isinstance(grad, SparseRows):
        if sums is not None:
            sums += grad**2
        rate = learning_rate if sums is None else learning_rate / np.sqrt(sums)
        if mu:
            assert anchor is not None
            param[...] = anchor + (param - rate * grad - anchor) / (1.0 + rate * mu)
        else:
            param -= rate * grad
        return
    if sums is not None:
        sums[grad.rows] += grad.values**2
    if mu:
        assert anchor is not None and active is not None
        rows = active
        delta = np.zeros((rows.shape[0], *param.shape[1:]))
        delta[np.searchsorted(rows, grad.rows)] = grad.values
    else:
        rows, delta = grad.rows, grad.values
    rate = learning_rate if sums is None else learning_rate / np.sqrt(sums[rows])
    if mu:
        base = anchor[rows]
        param[rows] = base + (param[rows] - rate * delta - base) / (1.0 + rate * mu)
    else:
        param[rows] -= rate * delta


def minibatch_sgd(
    params: Weights,
    data: Any,
    loss_and_grads: Callable[[Weights, Any], tuple[float, dict[str, np.ndarray]]],
    *,
    n: int,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    proximal_mu: float,
    seed: int,
) -> None:
    """Plain mini-batch (proximal) SGD on dense parameters, in place. ``data.take(rows)``
    gives a batch."""
    anchor = {name: p.copy() for name, p in params.items()} if proximal_mu else {}
    rng = np.random.default_rng(seed)
    for rows in batches(n, batch_size, epochs, rng):
        _, grads = loss_and_grads(params, data.take(rows))
        for name, grad in grads.items():
            proximal_update(
                params[name],
                grad,
                learning_rate=learning_rate,
                anchor=anchor.get(name),
                mu=proximal_mu,
            )


# --- link function and metrics ------------------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (no clipping needed)."""
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from the Mann-Whitney rank sum, ties sharing their average rank; NaN if one
    class is missing."""
    positives = y > 0.5
    n_pos = int(positives.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    mean_rank = ends - (counts - 1) / 2.0
    rank_sum = mean_rank[inverse.reshape(-1)][positives].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Log-loss, accuracy at probability 0.5, and ROC AUC."""
    return {
        "loss": log_loss(logits, y),
        "accuracy": float(np.mean((logits >= 0.0) == (y > 0.5))),
        "auc": auc(y, logits),
    }


@dataclass(frozen=True)
class DenseClassifier:
    """The ``train``/``evaluate`` pair of a dense binary classifier, from its three pieces:
    the tensor specs implied by some weights, the logits, and the loss with its gradients."""

    specs_of: Callable[[Mapping[str, Any]], list[dict[str, Any]]]
    logits: Callable[[Weights, np.ndarray], np.ndarray]
    loss_and_grads: Callable[[Weights, Tabular], tuple[float, Weights]]

    def train(
        self,
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
        """Mini-batch SGD from ``weights``; FedProx pulls towards them with strength
        ``proximal_mu``. Returns new float32 weights, their metrics on ``data`` and ``None``
        (no local state)."""
        check_training(
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            proximal_mu=proximal_mu,
        )
        no_local(local)
        specs = self.specs_of(weights)
        params = check_weights(weights, specs)
        table = tabular(data, specs[0]["shape"][0])
        minibatch_sgd(
            params,
            table,
            self.loss_and_grads,
            n=table.y.shape[0],
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            proximal_mu=proximal_mu,
            seed=seed,
        )
        metrics = classification_metrics(self.logits(params, table.x), table.y)
        return to_float32(params, specs), metrics, None

    def evaluate(
        self, weights: Mapping[str, np.ndarray], data: Any, *, local: None = None
    ) -> dict[str, float]:
        """``loss`` (mean log-loss), ``accuracy`` (at p = 0.5) and ``auc`` (NaN with one
        class)."""
        no_local(local)
        specs = self.specs_of(weights)
        params = check_weights(weights, specs)
        table = tabular(data, specs[0]["shape"][0])
        return classification_metrics(self.logits(params, table.x), table.y)
