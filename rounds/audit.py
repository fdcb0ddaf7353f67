"""Recording audit events. Called by services inside their transactions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from clients.models import Merchant
    from rounds.models import Event, Round


# Event kinds a merchant causes through the API (the rest are operators' or the system's).
MERCHANT_ACTIONS = (
    "update.",
    "evaluation.",
    "weights.",
    "merchant.key_registered",
    "secagg.advertise",
    "secagg.share",
    "secagg.mask",
    "secagg.unmask",
)


def record(
    *,
    kind: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    merchant: Merchant | None = None,
    fl_round: Round | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    from rounds.models import Event

    user = actor if actor is not None and actor.is_authenticated else None
    if not actor_label:
        actor_label = (
            f"operator:{user.get_username()}"
            if user is not None
            else f"merchant:{merchant.slug}"
            if merchant is not None and kind.startswith(MERCHANT_ACTIONS)
            else "system"
        )
    return Event.objects.create(
        kind=kind,
        actor=user,
        actor_label=actor_label[:100],
        merchant=merchant,
        fl_round=fl_round,
        data=data or {},
    )
