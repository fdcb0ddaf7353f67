"""Central differential privacy per model: settings, the budget ledger, refusal before opening,
and the clip norm in force (fixed, or adapted round after round: ``rounds.aggregation.dp``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from clients.sdk.privacy import WITHIN_CLIP_METRIC
from flportal.errors import Conflict, ValidationFailed
from rounds.aggregation import AggregationError, dp, update_norms
from rounds.models import FederatedModel, ModelVersion, Round

DP_STRATEGIES = frozenset({"fedavg", "fedprox"})
_BOUNDS: dict[str, tuple[float, float]] = {
    "clip_norm": (0.0, 1e6),
    "noise_multiplier": (0.0, 1000.0),
    "delta": (0.0, 0.01),
    "epsilon_budget": (0.0, 1000.0),
}
CLIPPING = ("fixed", "adaptive")
CLIP_MODES = ("server", "client")
# Adaptive clipping (Andrew et al. 2021): name -> (open bounds, default; None = required).
_ADAPTIVE: dict[str, tuple[tuple[float, float], float | None]] = {
    "target_quantile": ((0.0, 1.0), 0.5),
    "clip_learning_rate": ((0.0, 10.0), 0.2),
    "clip_count_stddev": ((0.0, 1e6), None),
}
_KNOWN = {*_BOUNDS, *_ADAPTIVE, "accountant", "clipping", "clip_mode"}
# Rounds that released (or are about to release) a noisy aggregate spend budget.
SPENDING = (Round.Status.OPEN, Round.Status.AGGREGATING, Round.Status.COMPLETED)


def parse_privacy(raw: Any, *, strategy: str) -> dict[str, Any]:
    """Validated DP settings ({} = no DP).

    ``clipping`` is ``fixed`` (default: every round clips at ``clip_norm``) or ``adaptive``
    (``clip_norm`` is the first round's; later rounds move it towards the ``target_quantile``
    of the update norms, step ``clip_learning_rate``, from a count noised with
    ``clip_count_stddev``). ``clip_count_stddev`` has no default: the paper suggests about
    (expected participants) / 20, but the portal cannot know that number when the policy is set
    and it must exceed ``noise_multiplier`` / 2 -- so it is asked for and checked here.
    ``clip_mode`` is ``server`` (default: the server clips each update) or ``client``
    (merchants clip their own change to the round's ``dp_clip_norm`` hint before upload, as
    secure aggregation needs; the server still clips every update it can see).
    """
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise ValidationFailed("privacy must be an object.", code="invalid_privacy")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ValidationFailed(f"Unknown privacy settings {unknown}.", code="invalid_privacy")
    settings: dict[str, Any] = {}
    for name, choices in (
        ("accountant", dp.ACCOUNTANTS),
        ("clipping", CLIPPING),
        ("clip_mode", CLIP_MODES),
    ):
        settings[name] = raw.get(name, choices[0])
        if settings[name] not in choices:
            raise ValidationFailed(f"{name} must be one of {choices}.", code="invalid_privacy")
    for name, (low, high) in _BOUNDS.items():
        settings[name] = _number(raw, name, low, high, upper_open=False)
    if settings["clipping"] == "adaptive":
        settings |= _parse_adaptive(raw, noise_multiplier=settings["noise_multiplier"])
    else:
        given = sorted(set(raw) & set(_ADAPTIVE))
        if given:
            raise ValidationFailed(
                f"{given} apply only with clipping 'adaptive'.", code="invalid_privacy"
            )
    if strategy not in DP_STRATEGIES:
        raise ValidationFailed(
            "Differential privacy runs with FedAvg or FedProx.", code="dp_needs_fedavg"
        )
    return settings


def _parse_adaptive(raw: dict[str, Any], *, noise_multiplier: float) -> dict[str, float]:
    settings: dict[str, float] = {}
    for name, ((low, high), default) in _ADAPTIVE.items():
        if name not in raw and default is None:
            raise ValidationFailed(
                f"Adaptive clipping needs privacy.{name} (about the expected participants "
                f"per round / 20, and more than noise_multiplier / 2 = {noise_multiplier / 2:g}).",
                code="clip_count_stddev_required",
            )
        upper_open = name == "target_quantile"
        settings[name] = (
            default if name not in raw else _number(raw, name, low, high, upper_open=upper_open)
        )
    try:
        dp.delta_noise_multiplier(noise_multiplier, settings["clip_count_stddev"])
    except AggregationError as exc:
        raise ValidationFailed(exc.detail, code=exc.code) from None
    return settings


def _number(raw: dict[str, Any], name: str, low: float, high: float, *, upper_open: bool) -> float:
    value = raw.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low < value <= high
        or (upper_open and value == high)
    ):
        bounds = f"({low:g}, {high:g}{')' if upper_open else ']'}"
        raise ValidationFailed(
            f"privacy.{name} must be a number in {bounds}.", code="invalid_privacy"
        )
    return float(value)


def round_privacy(
    fl_model: FederatedModel,
    *,
    base_version: ModelVersion | None,
    q: float,
    eligible: int,
    spent: float,
) -> dict[str, Any]:
    """The privacy snapshot of a round opening now: the model's settings, the sampling rate,
    epsilon once it has run, and the clip norm in force (adaptive: carried from the base
    version, with the noise multiplier z_delta its sum gets)."""
    settings = fl_model.privacy
    snapshot = {**settings, "q": q, "eligible": eligible, "epsilon_after": spent}
    if settings.get("clipping") == "adaptive":
        snapshot["clip_norm_initial"] = settings["clip_norm"]
        snapshot["clip_norm"] = current_clip_norm(fl_model, base_version=base_version)
        snapshot["delta_noise_multiplier"] = dp.delta_noise_multiplier(
            settings["noise_multiplier"], settings["clip_count_stddev"]
        )
    return snapshot


def current_clip_norm(fl_model: FederatedModel, *, base_version: ModelVersion | None) -> float:
    """The clip norm the next round uses: the model's ``clip_norm``, or with adaptive clipping
    the ``next_clip_norm`` its latest version was produced with -- unless the operator has set
    a new ``clip_norm`` since, which restarts the adaptation from it."""
    settings = fl_model.privacy
    info = base_version.aggregation if base_version is not None else {}
    if (
        settings.get("clipping") == "adaptive"
        and info.get("clipping") == "adaptive"
        and info.get("clip_norm_initial") == settings["clip_norm"]
        and "next_clip_norm" in info
    ):
        return float(info["next_clip_norm"])
    return float(settings["clip_norm"])


def client_hints(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Training hints for client-side clipping: merchants clip their change to ``dp_clip_norm``."""
    if snapshot and snapshot.get("clip_mode") == "client":
        return {"dp_clip_norm": snapshot["clip_norm"]}
    return {}


def dp_aggregate(
    *,
    snapshot: dict[str, Any],
    updates: Sequence[Any],
    current: dict[str, Any],
    metrics: Sequence[dict[str, Any]],
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """DP-FedAvg under a round's privacy snapshot (noise from ``rng``: the portal seeds it from
    the operating system's cryptographic source). ``metrics`` are the updates' reported
    metrics: in client mode each merchant says whether its change was within the clip norm."""
    adaptive = None
    if snapshot.get("clipping") == "adaptive":
        adaptive = dp.AdaptiveClipping(
            target_quantile=snapshot["target_quantile"],
            learning_rate=snapshot["clip_learning_rate"],
            count_stddev=snapshot["clip_count_stddev"],
        )
    within = None
    if adaptive is not None and snapshot.get("clip_mode") == "client":
        norms = update_norms(updates, reference=current)
        reported = [_reported_within(m) for m in metrics]
        within = dp.within_clip(norms, snapshot["clip_norm"], reported)
    weights, info = dp.dp_fedavg(
        updates,
        current=current,
        clip_norm=snapshot["clip_norm"],
        noise_multiplier=snapshot["noise_multiplier"],
        rng=rng,
        adaptive=adaptive,
        within=within,
    )
    info |= {"clip_mode": snapshot.get("clip_mode", "server")}
    info |= {"epsilon_after": snapshot["epsilon_after"]}
    if adaptive is not None:
        info["clip_norm_initial"] = snapshot["clip_norm_initial"]
    return weights, info


def _reported_within(metrics: dict[str, Any]) -> bool | None:
    value = (metrics or {}).get(WITHIN_CLIP_METRIC)
    return None if value is None else float(value) >= 0.5


def privacy_ledger(fl_model: FederatedModel) -> list[dict[str, Any]]:
    """Every round that spent budget, with what it released: sampling rate, noise, the clip
    norm in force and (adaptive clipping) the noisy count's sigma_b and the next clip norm."""
    rounds = (
        fl_model.rounds.filter(status__in=SPENDING)
        .exclude(privacy={})
        .select_related("result_version")
        .order_by("number")
    )
    ledger = []
    for r in rounds:
        version = getattr(r, "result_version", None)
        info = version.aggregation if version is not None else {}
        entry = {
            "round": r.number,
            "status": r.status,
            "q": r.privacy["q"],
            "noise_multiplier": r.privacy["noise_multiplier"],
            "epsilon_after": r.privacy["epsilon_after"],
            "clipping": r.privacy.get("clipping", "fixed"),
            "clip_mode": r.privacy.get("clip_mode", "server"),
            "clip_norm": r.privacy["clip_norm"],
        }
        if entry["clipping"] == "adaptive":
            entry |= {
                "delta_noise_multiplier": r.privacy["delta_noise_multiplier"],
                "clip_count_stddev": r.privacy["clip_count_stddev"],
                "unclipped_fraction": info.get("unclipped_fraction"),
                "next_clip_norm": info.get("next_clip_norm"),
            }
        ledger.append(entry)
    return ledger


def _event(entry: dict[str, Any]) -> dp.RoundEvent:
    """The accountant's view of a ledger entry (or of a planned round's snapshot)."""
    if entry.get("clipping") == "adaptive":
        return (entry["q"], entry["delta_noise_multiplier"], entry["clip_count_stddev"])
    return (entry["q"], entry["noise_multiplier"])


def _planned(settings: dict[str, Any], q: float) -> dp.RoundEvent:
    entry = {**settings, "q": q}
    if settings.get("clipping") == "adaptive":
        entry["delta_noise_multiplier"] = dp.delta_noise_multiplier(
            settings["noise_multiplier"], settings["clip_count_stddev"]
        )
    return _event(entry)


def privacy_report(fl_model: FederatedModel) -> dict[str, Any]:
    settings = fl_model.privacy
    if not settings:
        return {"enabled": False, "ledger": []}
    ledger = privacy_ledger(fl_model)
    spent = dp.epsilon(
        [_event(e) for e in ledger], delta=settings["delta"], accountant=settings["accountant"]
    )
    report = {
        "enabled": True,
        "clipping": "fixed",
        "clip_mode": "server",
        **settings,
        "epsilon_spent": spent,
        "epsilon_remaining": max(0.0, settings["epsilon_budget"] - spent),
        "current_clip_norm": current_clip_norm(
            fl_model, base_version=fl_model.versions.order_by("-number").first()
        ),
        "ledger": ledger,
    }
    if settings.get("clipping") == "adaptive":
        report["delta_noise_multiplier"] = _planned(settings, 1.0)[1]
    return report


def epsilon_after(fl_model: FederatedModel, *, q: float, extra: int = 1) -> float:
    """epsilon once ``extra`` more rounds at sampling rate ``q`` have run under the model's
    settings."""
    settings = fl_model.privacy
    events = [_event(e) for e in privacy_ledger(fl_model)]
    events += [_planned(settings, q)] * extra
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
