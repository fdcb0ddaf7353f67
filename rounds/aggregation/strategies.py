"""The catalogue of strategies: their parameters (defaults, bounds) and the one dispatcher.

``aggregate`` is what the portal calls; ``aggregate_span`` + ``finish`` are the same computation
split for parallel slices (coordinate-wise strategies only), and give bit-identical results.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rounds.aggregation import robust, server_opt
from rounds.aggregation.clipping import clip, clip_report
from rounds.aggregation.core import (
    AggregationError,
    Spans,
    Tensors,
    check_compatible,
    check_weights,
    reference_specs,
)
from rounds.aggregation.fedavg import fedavg


@dataclass(frozen=True)
class Param:
    default: float | None
    low: float
    high: float
    integer: bool = False
    low_inclusive: bool = True
    high_inclusive: bool = True
    help: str = ""

    def accepts(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below

    def describe(self) -> str:
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        kind = "integer" if self.integer else "number"
        return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"


_ETA = Param(0.1, 0.0, 100.0, low_inclusive=False, help="server learning rate")
_TAU = Param(1e-3, 0.0, 1.0, low_inclusive=False, help="adaptivity (numerical floor)")
_BETA1 = Param(0.9, 0.0, 1.0, high_inclusive=False, help="first-moment decay")
_BETA2 = Param(0.99, 0.0, 1.0, high_inclusive=False, help="second-moment decay")
_F = Param(0, 0, 10_000, integer=True, help="number of byzantine updates tolerated")
CLIP_NORM = Param(
    None,
    0.0,
    1e12,
    low_inclusive=False,
    help="clip each update's delta to this L2 norm (any strategy)",
)

STRATEGIES: dict[str, dict[str, Param]] = {
    "fedavg": {},
    "fedprox": {
        "mu": Param(0.01, 0.0, 1000.0, help="proximal term, sent to clients as proximal_mu")
    },
    "fedavgm": {
        "server_lr": Param(1.0, 0.0, 100.0, low_inclusive=False),
        "momentum": Param(0.9, 0.0, 1.0, high_inclusive=False),
    },
    "fedadagrad": {"eta": _ETA, "beta1": Param(0.0, 0.0, 1.0, high_inclusive=False), "tau": _TAU},
    "fedadam": {"eta": _ETA, "beta1": _BETA1, "beta2": _BETA2, "tau": _TAU},
    "fedyogi": {"eta": _ETA, "beta1": _BETA1, "beta2": _BETA2, "tau": _TAU},
    "median": {},
    "trimmed_mean": {
        "beta": Param(0.1, 0.0, 0.5, high_inclusive=False, help="fraction cut at each end")
    },
    "krum": {"f": _F},
    "multi_krum": {"f": _F, "m": Param(2, 1, 1_000_000, integer=True, help="updates kept")},
}
LABELS = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedavgm": "FedAvgM",
    "fedadagrad": "FedAdagrad",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "median": "Coordinate-wise median",
    "trimmed_mean": "Trimmed mean",
    "krum": "Krum",
    "multi_krum": "Multi-Krum",
}
SERVER_OPTIMIZERS = {
    "fedavgm": server_opt.fedavgm,
    "fedadagrad": server_opt.fedadagrad,
    "fedadam": server_opt.fedadam,
    "fedyogi": server_opt.fedyogi,
}
PARALLEL = frozenset(STRATEGIES) - {"krum", "multi_krum"}  # Krum needs all distances first


@dataclass
class Outcome:
    weights: dict[str, np.ndarray]
    state: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def parse_params(strategy: str, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated parameters with defaults filled in; raises with a precise code."""
    if strategy not in STRATEGIES:
        raise AggregationError(
            f"Unknown strategy {strategy!r} (known: {sorted(STRATEGIES)}).", code="unknown_strategy"
        )
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise AggregationError(
            "Strategy parameters must be an object.", code="invalid_strategy_params"
        )
    schema = {**STRATEGIES[strategy], "clip_norm": CLIP_NORM}
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise AggregationError(
            f"{LABELS[strategy]} takes no parameter(s) {unknown}; it takes {sorted(schema)}.",
            code="invalid_strategy_params",
        )
    params: dict[str, Any] = {}
    for name, param in schema.items():
        value = raw.get(name)
        if value is None:  # absent or null: the default (for clip_norm, no clipping)
            value = param.default
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or (param.integer and value != int(value))
            or not param.accepts(value)
        ):
            raise AggregationError(
                f"{name} must be a {param.describe()}, got {value!r}.",
                code="invalid_strategy_params",
            )
        params[name] = int(value) if param.integer else float(value)
    return params


def min_updates(strategy: str, params: Mapping[str, Any]) -> int:
    """The smallest number of updates the strategy can aggregate."""
    params = parse_params(strategy, params)
    if strategy in {"krum", "multi_krum"}:
        return max(2 * int(params["f"]) + 3, int(params.get("m", 1)))
    return 1


def aggregate(
    strategy: str,
    params: Mapping[str, Any],
    *,
    updates: Sequence[Tensors],
    weights: Sequence[float],
    current: Tensors,
    state: Mapping[str, np.ndarray],
) -> Outcome:
    """Run ``strategy`` on the updates (client weights) against the current global weights."""
    params = parse_params(strategy, params)
    check_weights(weights, len(updates))
    specs = reference_specs(updates)
    if current:
        check_compatible(specs, current, index=-1)  # the base version must fit the updates
    updates, info = clip_updates(updates, current, params)
    if strategy in {"krum", "multi_krum"}:
        result, kept = robust.krum(updates, weights, f=params["f"], m=params.get("m", 1))
        return Outcome(result, {}, info | {"kept": kept})
    return finish(
        strategy,
        params,
        coordinatewise=aggregate_span(
            strategy, params, updates=updates, weights=weights, spans=None
        ),
        current=current,
        state=state,
        info=info,
    )


def aggregate_span(
    strategy: str,
    params: Mapping[str, Any],
    *,
    updates: Sequence[Tensors],
    weights: Sequence[float],
    spans: Spans | None,
) -> dict[str, np.ndarray]:
    """The coordinate-wise part of a parallelisable strategy over ``spans`` (clip first)."""
    if strategy == "median":
        return robust.median(updates, spans=spans)
    if strategy == "trimmed_mean":
        return robust.trimmed_mean(updates, beta=params["beta"], spans=spans)
    if strategy in PARALLEL:
        return fedavg(updates, weights, spans=spans)
    raise AggregationError(f"{LABELS[strategy]} cannot run in slices.", code="not_parallel")


def finish(
    strategy: str,
    params: Mapping[str, Any],
    *,
    coordinatewise: dict[str, np.ndarray],
    current: Tensors,
    state: Mapping[str, np.ndarray],
    info: dict[str, Any] | None = None,
) -> Outcome:
    """Apply the server optimiser (if any) to the assembled coordinate-wise result."""
    info = dict(info or {})
    optimizer = SERVER_OPTIMIZERS.get(strategy)
    if optimizer is None:
        return Outcome(coordinatewise, {}, info)
    options = {k: v for k, v in params.items() if k != "clip_norm"}  # the rest are its own
    weights, new_state = optimizer(current, coordinatewise, state=state, **options)
    return Outcome(weights, new_state, info)


def clip_updates(
    updates: Sequence[Tensors], current: Tensors, params: Mapping[str, Any]
) -> tuple[Sequence[Tensors], dict[str, Any]]:
    """Apply the ``clip_norm`` parameter (if set); returns the updates and what clipping did."""
    if "clip_norm" not in params:
        return updates, {}
    clipped, norms = clip(updates, reference=current, max_norm=params["clip_norm"])
    return clipped, clip_report(norms, params["clip_norm"])
