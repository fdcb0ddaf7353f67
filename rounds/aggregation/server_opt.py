"""Server-side optimisers applied to the FedAvg pseudo-gradient Δ = avg(w_k) - x.

FedAvgM (Hsu et al. 2019) and FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2).
They are stateful, and the state is explicit: each function takes the previous state (an empty
mapping at first) and returns the new weights and the new state, which the portal stores with
the version it produced. Names in the state are ``<slot>:<tensor>``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rounds.aggregation.core import Tensors, accumulator_dtype

State = dict[str, np.ndarray]


def _slot(state: Mapping[str, np.ndarray], slot: str, name: str, like: np.ndarray) -> np.ndarray:
    previous = state.get(f"{slot}:{name}")
    return np.zeros_like(like) if previous is None else np.asarray(previous, dtype=like.dtype)


def _work(x: object) -> tuple[np.ndarray, np.dtype]:
    """The weights in their computation precision (half → single), and their own dtype."""
    array = np.asarray(x)
    return array.astype(accumulator_dtype(array.dtype), copy=False), array.dtype


def fedavgm(
    current: Tensors,
    average: Tensors,
    *,
    state: Mapping[str, np.ndarray],
    server_lr: float = 1.0,
    momentum: float = 0.9,
) -> tuple[dict[str, np.ndarray], State]:
    """x ← x - η·v, with v ← β·v + (x - avg). With β = 0 and η = 1 this is FedAvg."""
    weights: dict[str, np.ndarray] = {}
    new_state: State = {}
    for name, raw in current.items():
        x, dtype = _work(raw)
        gradient = x - np.asarray(average[name], dtype=x.dtype)  # the negative pseudo-gradient
        velocity = momentum * _slot(state, "momentum", name, x) + gradient
        weights[name] = (x - server_lr * velocity).astype(dtype)
        new_state[f"momentum:{name}"] = velocity.astype(x.dtype)
    return weights, new_state


def _adaptive(
    current: Tensors,
    average: Tensors,
    state: Mapping[str, np.ndarray],
    *,
    variant: str,
    eta: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[dict[str, np.ndarray], State]:
    weights: dict[str, np.ndarray] = {}
    new_state: State = {}
    for name, raw in current.items():
        x, dtype = _work(raw)
        delta = np.asarray(average[name], dtype=x.dtype) - x
        m = beta1 * _slot(state, "m", name, x) + (1.0 - beta1) * delta
        v = _slot(state, "v", name, x)
        squared = delta * delta
        if variant == "adagrad":
            v = v + squared
        elif variant == "adam":
            v = beta2 * v + (1.0 - beta2) * squared
        else:  # yogi
            v = v - (1.0 - beta2) * squared * np.sign(v - squared)
        weights[name] = (x + eta * m / (np.sqrt(v) + tau)).astype(dtype)
        new_state[f"m:{name}"] = m.astype(x.dtype)
        new_state[f"v:{name}"] = v.astype(x.dtype)
    return weights, new_state


def fedadagrad(
    current: Tensors,
    average: Tensors,
    *,
    state: Mapping[str, np.ndarray],
    eta: float = 0.1,
    beta1: float = 0.0,
    tau: float = 1e-3,
) -> tuple[dict[str, np.ndarray], State]:
    return _adaptive(
        current, average, state, variant="adagrad", eta=eta, beta1=beta1, beta2=0.0, tau=tau
    )


def fedadam(
    current: Tensors,
    average: Tensors,
    *,
    state: Mapping[str, np.ndarray],
    eta: float = 0.1,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> tuple[dict[str, np.ndarray], State]:
    return _adaptive(
        current, average, state, variant="adam", eta=eta, beta1=beta1, beta2=beta2, tau=tau
    )


def fedyogi(
    current: Tensors,
    average: Tensors,
    *,
    state: Mapping[str, np.ndarray],
    eta: float = 0.1,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> tuple[dict[str, np.ndarray], State]:
    return _adaptive(
        current, average, state, variant="yogi", eta=eta, beta1=beta1, beta2=beta2, tau=tau
    )
