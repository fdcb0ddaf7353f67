"""Model templates an operator can start from: the SDK module that trains it on the merchant's
side, the dimensions it needs, and sensible training hints and strategy."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from flportal.errors import ValidationFailed


@dataclass(frozen=True)
class Template:
    name: str
    label: str
    module: str  # clients.sdk.models.<module>
    dims: dict[str, int]  # dimension → default (0 = required)
    hints: dict[str, Any] = field(default_factory=dict)
    strategy: str = "fedavg"
    description: str = ""

    def sdk(self) -> ModuleType:
        return importlib.import_module(f"clients.sdk.models.{self.module}")


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            "purchase_propensity",
            "Purchase / re-order propensity (logistic regression)",
            "logreg",
            {"n_features": 0},
            {"epochs": 2, "learning_rate": 0.1, "batch_size": 64},
            description="Per customer-product features → probability of (re)purchase.",
        ),
        Template(
            "purchase_propensity_mlp",
            "Purchase / re-order propensity (small MLP)",
            "mlp",
            {"n_features": 0, "hidden": 32},
            {"epochs": 2, "learning_rate": 0.05, "batch_size": 64},
        ),
        Template(
            "purchase_intent",
            "Click-through / purchase intent (wide & deep, hashed)",
            "ctr",
            {"n_numeric": 0, "n_categorical": 0, "buckets": 4096, "embedding_dim": 8},
            {"epochs": 2, "learning_rate": 0.05, "batch_size": 64},
        ),
        Template(
            "recommender",
            "Recommendation (federated matrix factorisation)",
            "mf",
            {"n_items": 0, "k": 16},
            {"epochs": 5, "learning_rate": 0.02, "batch_size": 64},
            description="Item embeddings are shared; user embeddings never leave the shop.",
        ),
    ]
}


def template_get(name: str) -> Template:
    template = TEMPLATES.get(name)
    if template is None:
        raise ValidationFailed(
            f"Unknown template {name!r} (known: {sorted(TEMPLATES)}).", code="unknown_template"
        )
    return template


def template_dims(template: Template, raw: Any) -> dict[str, int]:
    """The template's dimensions: required ones given, defaults filled, all positive ints."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ValidationFailed("dims must be an object.", code="invalid_dims")
    unknown = sorted(set(raw) - set(template.dims))
    if unknown:
        raise ValidationFailed(
            f"{template.label} takes no dims {unknown}; it takes {sorted(template.dims)}.",
            code="invalid_dims",
        )
    dims: dict[str, int] = {}
    for name, default in template.dims.items():
        value = raw.get(name, default or None)
        if (
            value is None
            or isinstance(value, bool)
            or not isinstance(value, int)
            or not 1 <= value <= 100_000_000
        ):
            raise ValidationFailed(f"dims.{name} must be a positive integer.", code="invalid_dims")
        dims[name] = value
    return dims


def template_tensors(template: Template, dims: dict[str, int]) -> list[dict[str, Any]]:
    return list(template.sdk().tensor_specs(**dims))


def template_init(template: Template, dims: dict[str, int], *, seed: int) -> dict[str, np.ndarray]:
    return dict(template.sdk().init(seed=seed, **dims))
