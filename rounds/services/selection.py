"""Who is invited to a round: all active merchants, a random fraction with over-selection, or a
cohort of merchants by their attributes (category, region, size band), optionally sampled.

A round stores its selection *policy* (plain JSON) when it is scheduled and applies it when it
opens. The policy:

    {}                                            all active merchants
    {"fraction": 0.3, "over_selection": 0.2}      ceil(n * 0.3 * 1.2) of the n active, at random
    {"cohort": {"category": ["grocery"], "size_band": ["small", "medium"]}, "fraction": 0.5}

Within a cohort, values of one attribute are alternatives (OR); attributes combine with AND.
Over-selection invites more merchants than the fraction asks for, so the round still reaches its
target when some of them drop out (Bonawitz et al., "Towards Federated Learning at Scale", 2019).

:func:`invite_count` and :func:`select` are pure (no Django, no hidden randomness: the caller
passes the generator; the portal passes one backed by the operating system's cryptographic
source). :func:`select_participants` is the database side used by ``round_open``.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeVar

from flportal.errors import ValidationFailed

COHORT_FIELDS: dict[str, str] = {
    "category": "category",
    "region": "region",
    "size_band": "size band",
}
MAX_OVER_SELECTION = 1.0  # at most twice what the fraction asks for
MAX_COHORT_VALUES = 50
MAX_VALUE_LENGTH = 64

T = TypeVar("T")


# --- pure core ----------------------------------------------------------------------------


def invite_count(eligible: int, *, fraction: float = 1.0, over_selection: float = 0.0) -> int:
    """ceil(eligible * fraction * (1 + over_selection)), capped at ``eligible``.

    Computed in exact decimal arithmetic, so 100 * 0.3 is 30 (binary floats say 30.000...04,
    which would round up to 31)."""
    if eligible <= 0:
        return 0
    wanted = eligible * _exact(fraction) * (1 + _exact(over_selection))
    return min(eligible, math.ceil(wanted))


def select(
    candidates: Sequence[T],
    *,
    fraction: float = 1.0,
    over_selection: float = 0.0,
    rng: random.Random,
) -> list[T]:
    """The invited subset of ``candidates``, in their order. Everyone when fraction is 1;
    otherwise a uniform random sample (without replacement) of :func:`invite_count` of them."""
    count = invite_count(len(candidates), fraction=fraction, over_selection=over_selection)
    if count >= len(candidates):
        return list(candidates)
    chosen = set(rng.sample(range(len(candidates)), count))
    return [c for i, c in enumerate(candidates) if i in chosen]


def parse_selection(raw: Any) -> dict[str, Any]:
    """The validated, normalised policy ({} = all active merchants), or a 400 with a code."""
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationFailed("selection must be an object.", code="invalid_selection")
    unknown = sorted(set(raw) - {"fraction", "over_selection", "cohort"})
    if unknown:
        raise ValidationFailed(
            f"Unknown selection settings {unknown} (known: cohort, fraction, over_selection).",
            code="invalid_selection",
        )
    policy: dict[str, Any] = {}
    fraction = _number(raw.get("fraction", 1.0), "fraction", code="invalid_fraction")
    if not 0.0 < fraction <= 1.0:
        raise ValidationFailed(
            "selection.fraction must be in (0, 1] (1 = everyone eligible).",
            code="invalid_fraction",
        )
    over = _number(raw.get("over_selection", 0.0), "over_selection", code="invalid_over_selection")
    if not 0.0 <= over <= MAX_OVER_SELECTION:
        raise ValidationFailed(
            f"selection.over_selection must be in [0, {MAX_OVER_SELECTION:g}] "
            "(0.2 invites 20% more than the fraction).",
            code="invalid_over_selection",
        )
    if over and fraction == 1.0:
        raise ValidationFailed(
            "Over-selection needs a fraction below 1; with fraction 1 everyone is invited.",
            code="invalid_over_selection",
        )
    if fraction < 1.0:
        policy["fraction"] = fraction
        policy["over_selection"] = over
    cohort = parse_cohort(raw.get("cohort"))
    if cohort:
        policy["cohort"] = cohort
    return policy


def parse_cohort(raw: Any) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationFailed(
            "selection.cohort must be an object of attribute -> list of values.",
            code="invalid_cohort",
        )
    unknown = sorted(set(raw) - set(COHORT_FIELDS))
    if unknown:
        raise ValidationFailed(
            f"Merchants cannot be selected by {unknown}; cohorts filter on "
            f"{sorted(COHORT_FIELDS)}.",
            code="invalid_cohort",
        )
    cohort: dict[str, list[str]] = {}
    for name in COHORT_FIELDS:
        values = raw.get(name)
        if values is None:
            continue
        if isinstance(values, str):
            values = [values]
        if (
            not isinstance(values, list)
            or len(values) > MAX_COHORT_VALUES
            or not all(_cohort_value(v) for v in values)
        ):
            raise ValidationFailed(
                f"selection.cohort.{name} must be a list of at most {MAX_COHORT_VALUES} "
                f"non-empty strings.",
                code="invalid_cohort",
            )
        cleaned = sorted({v.strip() for v in values})
        if cleaned:
            cohort[name] = cleaned
    return cohort


def _cohort_value(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value.strip()) <= MAX_VALUE_LENGTH


def describe(policy: Mapping[str, Any]) -> str:
    """One line for pages and failure reasons, e.g. '30% (+20% over-selection) of active
    merchants with category grocery and region eu-west or eu-north'."""
    fraction = policy.get("fraction", 1.0)
    who = "all active merchants" if fraction >= 1.0 else f"{_percent(fraction)}"
    if fraction < 1.0:
        over = policy.get("over_selection", 0.0)
        who += f" (+{_percent(over)} over-selection)" if over else ""
        who += " of active merchants"
    cohort = policy.get("cohort") or {}
    if cohort:
        who += " with " + " and ".join(
            f"{COHORT_FIELDS[name]} {' or '.join(values)}" for name, values in cohort.items()
        )
    return who


def _exact(value: float) -> Fraction:
    return Fraction(repr(float(value)))


def _number(value: Any, name: str, *, code: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationFailed(f"selection.{name} must be a number.", code=code)
    return float(value)


def _percent(value: float) -> str:
    return f"{value * 100:.4g}%"


# --- the database side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The outcome of applying a policy when a round opens."""

    policy: dict[str, Any]
    eligible: int  # active merchants matching the cohort
    merchant_ids: list[int]  # the invited ones

    @property
    def invited(self) -> int:
        return len(self.merchant_ids)

    def shortfall(self, quorum: int) -> str | None:
        """Why the round cannot reach its quorum with these participants, or None."""
        if self.invited >= quorum:
            return None
        if self.eligible == 0 and self.policy.get("cohort"):
            return (
                f"No active merchant matches the cohort ({describe(self.policy)}); "
                f"the quorum is {quorum}."
            )
        if self.invited < self.eligible:
            return (
                f"The selection ({describe(self.policy)}) invited {self.invited} of "
                f"{self.eligible} eligible merchants; the quorum is {quorum}."
            )
        return f"Only {self.invited} active merchants can take part; the quorum is {quorum}."


def eligible_merchants(policy: Mapping[str, Any]) -> Any:
    """Active merchants matching the policy's cohort, as a queryset ordered by id."""
    from clients.models import Merchant

    merchants = Merchant.objects.filter(status=Merchant.Status.ACTIVE)
    for name, values in (policy.get("cohort") or {}).items():
        merchants = merchants.filter(**{f"{name}__in": values})
    return merchants.order_by("pk")


def select_participants(
    *, policy: Mapping[str, Any], rng: random.Random | None = None
) -> Selection:
    """Apply a round's policy now. The sample comes from ``rng`` (default: the operating
    system's cryptographic source, so nobody can predict or steer who is invited)."""
    ids = list(eligible_merchants(policy).values_list("pk", flat=True))
    chosen = select(
        ids,
        fraction=policy.get("fraction", 1.0),
        over_selection=policy.get("over_selection", 0.0),
        rng=rng or secrets.SystemRandom(),
    )
    return Selection(policy=dict(policy), eligible=len(ids), merchant_ids=chosen)


def selection_preview(policy: Mapping[str, Any]) -> dict[str, int]:
    """How many merchants the policy would invite if the round opened now."""
    eligible = eligible_merchants(policy).count()
    invited = invite_count(
        eligible,
        fraction=policy.get("fraction", 1.0),
        over_selection=policy.get("over_selection", 0.0),
    )
    return {"eligible": eligible, "invited": invited}


def default_target(*, min_updates: int, policy: Mapping[str, Any]) -> int:
    """A quorum-friendly target when none is given: the number the fraction asks for (without
    the over-selected extra, which only absorbs drop-outs) among the merchants eligible now, and
    never below the quorum. Without a fraction the round closes once the quorum has reported."""
    fraction = policy.get("fraction", 1.0)
    if fraction >= 1.0:
        return min_updates
    eligible = eligible_merchants(policy).count()
    return max(min_updates, invite_count(eligible, fraction=fraction))
