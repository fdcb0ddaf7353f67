"""Model templates merchants train locally, in pure numpy (no Django, nothing from flportal).

Every template module has the same functional API — no hidden state, explicit seeds, float32
tensors named as safetensors keys::

    tensor_specs(**dims) -> [{"name", "shape", "dtype": "float32"}, ...]   # the global tensors
    init(*, seed=0, **dims) -> {name: array}
    train(weights, data, *, epochs, learning_rate, batch_size, proximal_mu=0.0, seed=0,
          local=None) -> (new global weights, train metrics, new local state or None)
    evaluate(weights, data, *, local=None) -> {metric: value}

plus ``DEFAULT_HINTS``, the local-training hints used when a round sends none.
:func:`make_trainer` wraps a template into an SDK :class:`~clients.sdk.training.Trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from clients.sdk.models import ctr, logreg, mf, mlp
from clients.sdk.training import EvalResult, Trainer, TrainResult

__all__ = [
    "TEMPLATES",
    "as_float",
    "as_int",
    "ctr",
    "logreg",
    "make_trainer",
    "mf",
    "mlp",
    "template_module",
]

TEMPLATES: dict[str, ModuleType] = {"logreg": logreg, "mlp": mlp, "ctr": ctr, "mf": mf}


def template_module(template: str) -> ModuleType:
    module = TEMPLATES.get(template)
    if module is None:
        raise ValueError(f"unknown template {template!r} (known: {sorted(TEMPLATES)})")
    return module


def make_trainer(
    template: str,
    data_provider: Callable[[], tuple[Any, Any]],
    *,
    seed: int | str = 0,
    **dims: int | str,
) -> Trainer:
    """A trainer for ``template`` on this merchant's data; ``data_provider()`` (called once,
    now) returns ``(train_data, test_data)``.

    Each call ``trainer(weights, hints)`` trains with the round's hints (``epochs``,
    ``learning_rate``, ``batch_size``, ``proximal_mu``; missing ones from the template's
    ``DEFAULT_HINTS``) and the seed ``seed + hints["round"]``, keeps the template's local
    state (matrix factorisation's user factors) for the next call, and reports the train
    metrics plus the new weights' metrics on ``test_data`` prefixed ``test_``. The trainer's
    ``evaluate(weights)`` scores global weights on ``test_data`` (federated evaluation).
    Non-finite metrics (an AUC with one class) are left out: the portal accepts finite
    numbers only. With ``dims`` given, weights that do not match ``tensor_specs(**dims)``
    are refused.
    """
    module = template_module(template)
    base_seed = as_int("seed", seed)
    expected = module.tensor_specs(**{k: as_int(k, v) for k, v in dims.items()}) if dims else None
    train_data, test_data = data_provider()
    num_examples, num_test = _num_examples(train_data), _num_examples(test_data)
    local: Any = None

    def train(weights: Mapping[str, np.ndarray], hints: Mapping[str, Any]) -> TrainResult:
        nonlocal local
        if expected is not None:
            _check_specs(weights, expected)
        hint = {**module.DEFAULT_HINTS, **{k: v for k, v in (hints or {}).items() if v is not None}}
        new, metrics, new_local = module.train(
            weights,
            train_data,
            epochs=as_int("epochs", hint["epochs"]),
            learning_rate=as_float("learning_rate", hint["learning_rate"]),
            batch_size=as_int("batch_size", hint["batch_size"]),
            proximal_mu=as_float("proximal_mu", hint.get("proximal_mu", 0.0)),
            seed=base_seed + as_int("round", hint.get("round", 0)),
            local=local,
        )
        test = module.evaluate(new, test_data, local=new_local)
        local = new_local
        metrics |= {f"test_{name}": value for name, value in test.items()}
        return TrainResult(weights=new, num_examples=num_examples, metrics=_finite(metrics))

    def evaluate(weights: Mapping[str, np.ndarray]) -> EvalResult:
        if expected is not None:
            _check_specs(weights, expected)
        metrics = module.evaluate(weights, test_data, local=local)
        return EvalResult(num_examples=num_test, metrics=_finite(metrics))

    train.evaluate = evaluate  # type: ignore[attr-defined]
    return train


def _num_examples(data: Any) -> int:
    labels = data.ratings if hasattr(data, "ratings") else data.y
    return int(np.shape(labels)[0])


def _check_specs(weights: Mapping[str, np.ndarray], expected: list[dict[str, Any]]) -> None:
    found = {name: list(np.shape(array)) for name, array in weights.items()}
    wanted = {s["name"]: list(s["shape"]) for s in expected}
    if found != wanted:
        raise ValueError(f"weights {found} do not match the template's tensors {wanted}")


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {name: float(v) for name, v in metrics.items() if math.isfinite(v)}


def as_int(name: str, value: Any) -> int:
    """Accept 3, "3" and 3.0 (JSON and command-line spellings); refuse 3.5, True, "x"."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(number)


def as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
