"""Central differential privacy per model: settings, the budget ledger, refusal before opening."""

from __future__ import annotations

import math
from typing import Any

from flportal.errors import Conflict, ValidationFailed
from rounds.aggregation import dp
from rounds.models import FederatedModel, Round

DP_STRATEGIES = frozenset({"fedavg", "fedprox"})
_BOUNDS: dict[str, tuple[float, float]] = {
    "clip_norm": (0.0, 1e6),
    "noise_multiplier": (0.0, 1000.0),
    "delta": (0.0, 0.01),
    "epsilon_budget": (0.0, 1000.0),
}
# Rounds that released (or are about to release) a noisy aggregate spend budget.
SPENDING = (Round.Status.OPEN, Round.Status.AGGREGATING, Round.Status.COMPLETED)


def parse_privacy(raw: Any, *, strategy: str) -> dict[str, Any]:
    """Validated DP settings ({} = no DP)."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise ValidationFailed("privacy must be an object.", code="invalid_privacy")
    unknown = sorted(set(raw) - {*_BOUNDS, "accountant"})
    if unknown:
        raise ValidationFailed(f"Unknown privacy settings {unknown}.", code="invalid_privacy")
    settings: dict[str, Any] = {"accountant": raw.get("accountant", "rdp")}
    if settings["accountant"] not in dp.ACCOUNTANTS:
        raise ValidationFailed(
            f"accountant must be one of {dp.ACCOUNTANTS}.", code="invalid_privacy"
        )
    for name, (low, high) in _BOUNDS.items():
        value = raw.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low < value <= high
        ):
            raise ValidationFailed(
                f"privacy.{name} must be a number in ({low:g}, {high:g}].", code="invalid_privacy"
            )
        settings[name] = float(value)
    if strategy not in DP_STRATEGIES:
        raise ValidationFailed(
            "Differential privacy runs with FedAvg or FedProx.", code="dp_needs_fedavg"
        )
    return settings


def privacy_ledger(fl_model: FederatedModel) -> list[dict[str, Any]]:
    rounds = fl_model.rounds.filter(status__in=SPENDING).exclude(privacy={}).order_by("number")
    return [
        {
            "round": r.number,
            "status": r.status,
            "q": r.privacy["q"],
            "noise_multiplier": r.privacy["noise_multiplier"],
            "epsilon_after": r.privacy["epsilon_after"],
        }
        for r in rounds
    ]


def privacy_report(fl_model: FederatedModel) -> dict[str, Any]:
    settings = fl_model.privacy
    if not settings:
        return {"enabled": False, "ledger": []}
    ledger = privacy_ledger(fl_model)
    spent = dp.epsilon(
        [(e["q"], e["noise_multiplier"]) for e in ledger],
        delta=settings["delta"],
        accountant=settings["accountant"],
    )
    return {
        "enabled": True,
        **settings,
        "epsilon_spent": spent,
        "epsilon_remaining": max(0.0, settings["epsilon_budget"] - spent),
        "ledger": ledger,
    }


def epsilon_after(fl_model: FederatedModel, *, q: float, extra: int = 1) -> float:
    """ε once ``extra`` more rounds at sampling rate ``q`` have run under the model's settings."""
    settings = fl_model.privacy
    events = [(e["q"], e["noise_multiplier"]) for e in privacy_ledger(fl_model)]
    events += [(q, settings["noise_multiplier"])] * extra
    return dp.epsilon(events, delta=settings["delta"], accountant=settings["accountant"])


def check_budget(fl_model: FederatedModel, *, q: float, extra: int = 1) -> float:
    spent = epsilon_after(fl_model, q=q, extra=extra)
    budget = fl_model.privacy["epsilon_budget"]
    if spent > budget:
        raise Conflict(
            f"This would spend epsilon {spent:.3f} of the model's budget "
            f"{budget:g} (delta {fl_model.privacy['delta']:g}).",
            code="privacy_budget_exhausted",
        )
    return spent
