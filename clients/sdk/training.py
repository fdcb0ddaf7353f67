"""What a merchant plugs into the client: a function that trains on local data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class TrainResult:
    """The outcome of local training: new weights, how many examples, and scalar metrics."""

    weights: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer(Protocol):
    """Train on the merchant's own data, starting from the global weights.

    ``hints`` carries the round's local-training hints (epochs, learning_rate, batch_size,
    proximal_mu) plus ``round`` (the round number). Customer data never leaves this function.
    """

    def __call__(
        self, weights: Mapping[str, np.ndarray], hints: Mapping[str, Any]
    ) -> TrainResult: ...


@dataclass(frozen=True)
class EvalResult:
    """A merchant's evaluation of global weights on its own held-out data."""

    num_examples: int
    metrics: dict[str, float]


class Evaluator(Protocol):
    """Optional companion of a trainer (as its ``evaluate`` attribute): score the new global
    weights on held-out local data after each round — federated evaluation."""

    def __call__(self, weights: Mapping[str, np.ndarray]) -> EvalResult: ...
