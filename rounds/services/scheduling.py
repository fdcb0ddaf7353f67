"""Scheduling rounds as an operator does it: one round now or at a time, or a series of K rounds
spaced by an interval (beat opens each when it falls due), with a participant selection policy.
A series shares a uuid so it can be shown and cancelled as a group."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from flportal.errors import Conflict, NotFound, ValidationFailed
from rounds import audit
from rounds.models import FederatedModel, Round
from rounds.services.lifecycle import round_cancel, round_create
from rounds.services.selection import default_target, parse_selection

MAX_SERIES = 100
MIN_INTERVAL = 60
MAX_INTERVAL = 30 * 24 * 3600
PENDING = (Round.Status.SCHEDULED, Round.Status.OPEN)


def rounds_schedule(
    *,
    fl_model: FederatedModel,
    min_updates: int,
    target_updates: int | None = None,
    duration_seconds: int = 600,
    opens_at: datetime | None = None,
    count: int = 1,
    interval_seconds: int | None = None,
    selection: Any = None,
    actor: AbstractBaseUser | None = None,
) -> list[Round]:
    """Schedule ``count`` rounds; round i opens at ``opens_at + i * interval_seconds`` (without
    an interval all are due at once and run back to back). All or nothing: if any round is
    refused (quorum, budget, ...) none is created. A round due now opens at once.

    Without ``target_updates``, a sampled selection closes once the number the fraction asks for
    has reported (:func:`rounds.services.selection.default_target`); otherwise at the quorum."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SERIES:
        raise ValidationFailed(
            f"count must be an integer in [1, {MAX_SERIES}].", code="invalid_count"
        )
    if interval_seconds is not None and (
        isinstance(interval_seconds, bool)
        or not isinstance(interval_seconds, int)
        or not MIN_INTERVAL <= interval_seconds <= MAX_INTERVAL
    ):
        raise ValidationFailed(
            f"interval_seconds must be within [{MIN_INTERVAL}, {MAX_INTERVAL}].",
            code="invalid_interval",
        )
    if interval_seconds is not None and count == 1:
        raise ValidationFailed(
            "An interval needs a series of at least two rounds.", code="invalid_interval"
        )
    policy = parse_selection(selection)
    if target_updates is None and isinstance(min_updates, int) and min_updates >= 1:
        target_updates = default_target(min_updates=min_updates, policy=policy)
    start = opens_at or timezone.now()
    series = uuid.uuid4() if count > 1 else None
    step = timedelta(seconds=interval_seconds or 0)
    with transaction.atomic():
        created = [
            round_create(
                fl_model=fl_model,
                min_updates=min_updates,
                target_updates=target_updates,
                duration_seconds=duration_seconds,
                opens_at=start + i * step,
                selection=policy,
                series=series,
                actor=actor,
            )
            for i in range(count)
        ]
    return created


def series_rounds(*, series: uuid.UUID) -> list[Round]:
    rounds = list(
        Round.objects.select_related("fl_model", "result_version")
        .filter(series=series)
        .order_by("number")
    )
    if not rounds:
        raise NotFound(f"No series {series}.", code="series_not_found")
    return rounds


def round_series_cancel(*, series: uuid.UUID, actor: AbstractBaseUser | None = None) -> list[Round]:
    """Cancel every round of a series that is still scheduled or open; finished ones stay."""
    rounds = series_rounds(series=series)
    with transaction.atomic():
        cancelled = []
        for fl_round in rounds:
            if fl_round.status not in PENDING:
                continue
            try:
                cancelled.append(round_cancel(fl_round=fl_round, actor=actor))
            except Conflict:  # it finished in the meantime
                continue
        if not cancelled:
            raise Conflict(
                "No round of this series is scheduled or open.", code="series_not_cancellable"
            )
        audit.record(
            kind="series.cancelled",
            actor=actor,
            data={
                "series": str(series),
                "model": rounds[0].fl_model.slug,
                "rounds": [r.number for r in cancelled],
            },
        )
    return cancelled
