"""The round state machine: scheduled → open → aggregating → completed | failed | cancelled.

Every transition is a conditional update (``filter(pk=…, status=old).update(status=new)``) that
proceeds only if it changed exactly one row, so racing actors — two uploads, a deadline tick and
the last upload, two workers running the same task — cannot both win. Work is enqueued and
events are broadcast only after the transaction commits.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Max, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from clients.models import Merchant
from clients.sdk import codec
from flportal.errors import Conflict, NotFound, ValidationFailed
from rounds import artifacts, audit, broadcast
from rounds.aggregation import AggregationError, fedavg
from rounds.models import FederatedModel, Round, Update
from rounds.services.fl_models import version_create, version_latest

logger = logging.getLogger(__name__)

ACTIVE_STATUSES = (Round.Status.OPEN, Round.Status.AGGREGATING)
MAX_DURATION = 30 * 24 * 3600


def round_get(*, round_id: int) -> Round:
    fl_round = Round.objects.select_related("fl_model", "base_version").filter(pk=round_id).first()
    if fl_round is None:
        raise NotFound(f"No round {round_id}.", code="round_not_found")
    return fl_round


def round_create(
    *,
    fl_model: FederatedModel,
    min_updates: int,
    target_updates: int | None = None,
    duration_seconds: int = 600,
    opens_at: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> Round:
    """Schedule a round. It opens at ``opens_at`` (default now) once no other round of the same
    model is running, so creating several rounds at once schedules a series."""
    if not isinstance(min_updates, int) or min_updates < 1:
        raise ValidationFailed("min_updates must be a positive integer.", code="invalid_quorum")
    target_updates = min_updates if target_updates is None else target_updates
    if not isinstance(target_updates, int) or target_updates < min_updates:
        raise ValidationFailed(
            "target_updates must be at least min_updates.", code="invalid_target"
        )
    if not isinstance(duration_seconds, int) or not 1 <= duration_seconds <= MAX_DURATION:
        raise ValidationFailed(
            f"duration_seconds must be within [1, {MAX_DURATION}].", code="invalid_duration"
        )
    now = timezone.now()
    opens_at = opens_at or now
    if opens_at < now - timedelta(minutes=5):
        raise ValidationFailed("opens_at is in the past.", code="invalid_opens_at")
    if version_latest(fl_model) is None:
        raise Conflict(
            "The model has no version yet; upload initial weights first.",
            code="model_has_no_version",
        )
    with transaction.atomic():
        FederatedModel.objects.select_for_update().filter(pk=fl_model.pk).first()
        number = (fl_model.rounds.aggregate(n=Max("number"))["n"] or 0) + 1
        fl_round = Round.objects.create(
            fl_model=fl_model,
            number=number,
            min_updates=min_updates,
            target_updates=target_updates,
            duration_seconds=duration_seconds,
            opens_at=opens_at,
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        audit.record(
            kind="round.scheduled",
            actor=actor,
            fl_round=fl_round,
            data={"opens_at": opens_at.isoformat()},
        )
        _announce(fl_round, "round.scheduled")
    if opens_at <= now:
        round_open(fl_round=fl_round)
        fl_round.refresh_from_db()
    return fl_round


def round_open(*, fl_round: Round) -> bool:
    """Open a due scheduled round if its model has no running round. True if it opened."""
    with transaction.atomic():
        FederatedModel.objects.select_for_update().filter(pk=fl_round.fl_model_id).first()
        if Round.objects.filter(
            fl_model_id=fl_round.fl_model_id, status__in=ACTIVE_STATUSES
        ).exists():
            return False
        base_version = version_latest(fl_round.fl_model)
        now = timezone.now()
        deadline = now + timedelta(seconds=fl_round.duration_seconds)
        claimed = Round.objects.filter(
            pk=fl_round.pk, status=Round.Status.SCHEDULED, opens_at__lte=now
        ).update(
            status=Round.Status.OPEN, opened_at=now, deadline_at=deadline, base_version=base_version
        )
        if claimed != 1:
            return False
        fl_round.refresh_from_db()
        participants = list(Merchant.objects.filter(status=Merchant.Status.ACTIVE))
        fl_round.participants.set(participants)
        audit.record(
            kind="round.opened",
            fl_round=fl_round,
            data={
                "participants": len(participants),
                "base_version": base_version.number if base_version else None,
            },
        )
        if len(participants) < fl_round.min_updates:
            _fail(
                fl_round,
                f"Only {len(participants)} active merchants can take part; the "
                f"quorum is {fl_round.min_updates}.",
            )
        else:
            _announce(fl_round, "round.opened")
    return True


def round_close(*, fl_round: Round, actor: AbstractBaseUser | None = None) -> Round:
    """Close an open round early (operator). Needs the quorum; aggregation follows."""
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=fl_round.pk)
        if locked.status != Round.Status.OPEN:
            raise Conflict(f"The round is {locked.status}, not open.", code="round_not_open")
        submitted = _accepted(locked)
        if submitted < locked.min_updates:
            raise Conflict(
                f"Only {submitted} of {locked.min_updates} required updates; cancel "
                "the round instead, or wait.",
                code="below_quorum",
            )
        _begin_aggregation(locked, reason="closed by operator", actor=actor)
    locked.refresh_from_db()
    return locked


def round_cancel(*, fl_round: Round, actor: AbstractBaseUser | None = None) -> Round:
    with transaction.atomic():
        now = timezone.now()
        changed = Round.objects.filter(
            pk=fl_round.pk, status__in=[Round.Status.SCHEDULED, Round.Status.OPEN]
        ).update(status=Round.Status.CANCELLED, finished_at=now, closed_at=now)
        fl_round.refresh_from_db()
        if changed != 1:
            raise Conflict(
                f"A {fl_round.status} round cannot be cancelled.", code="round_not_cancellable"
            )
        audit.record(kind="round.cancelled", actor=actor, fl_round=fl_round)
        _announce(fl_round, "round.cancelled")
        _open_next_on_commit(fl_round.fl_model_id)
    return fl_round


def rounds_tick(*, now: datetime | None = None) -> dict[str, int]:
    """Beat's periodic work: open due rounds, close rounds whose deadline passed."""
    now = now or timezone.now()
    counts = {"opened": 0, "closed": 0, "failed": 0}
    for fl_round in Round.objects.filter(status=Round.Status.SCHEDULED, opens_at__lte=now).order_by(
        "opens_at", "number"
    ):
        counts["opened"] += int(round_open(fl_round=fl_round))
    for round_id in Round.objects.filter(
        status=Round.Status.OPEN, deadline_at__lte=now
    ).values_list("pk", flat=True):
        with transaction.atomic():
            locked = Round.objects.select_for_update().get(pk=round_id)
            if locked.status != Round.Status.OPEN:
                continue
            submitted = _accepted(locked)
            if submitted >= locked.min_updates:
                _begin_aggregation(locked, reason="deadline passed")
                counts["closed"] += 1
            else:
                _fail(
                    locked,
                    f"Deadline passed with {submitted} of {locked.min_updates} required updates.",
                )
                counts["failed"] += 1
    return counts


def round_aggregate(*, round_id: int) -> int | None:
    """Aggregate a closed round into a new version. Idempotent: a round that is no longer
    aggregating (already done by another worker, or gone) is left alone. Returns the version
    number produced, or None."""
    fl_round = Round.objects.select_related("fl_model", "base_version").filter(pk=round_id).first()
    if fl_round is None or fl_round.status != Round.Status.AGGREGATING:
        logger.info("round %s is not aggregating; nothing to do", round_id)
        return None
    updates = list(fl_round.updates.filter(status=Update.Status.ACCEPTED).order_by("merchant_id"))
    try:
        result = _fedavg_from_storage(updates)
    except (AggregationError, codec.CodecError, OSError) as exc:
        with transaction.atomic():
            locked = Round.objects.select_for_update().get(pk=round_id)
            if locked.status == Round.Status.AGGREGATING:
                _fail(locked, f"Aggregation failed: {getattr(exc, 'detail', exc)}")
        return None
    metrics = _weighted_metrics(updates)
    stored: list[str] = []
    try:
        with artifacts.written(result) as blob, transaction.atomic():
            locked = Round.objects.select_for_update().get(pk=round_id)
            if locked.status != Round.Status.AGGREGATING:
                return None  # another worker finished first
            version = version_create(
                fl_model=fl_round.fl_model, blob=blob, produced_by=locked, metrics=metrics
            )
            stored.append(version.weights.name)
            _transition(
                locked, Round.Status.AGGREGATING, Round.Status.COMPLETED, finished_at=timezone.now()
            )
            audit.record(
                kind="round.completed",
                fl_round=locked,
                data={"version": version.number, "participants": len(updates), "metrics": metrics},
            )
            _announce(locked, "round.completed")
            _open_next_on_commit(locked.fl_model_id)
    except Exception:
        for name in stored:  # the transaction rolled back: the file must not outlive it
            artifacts.delete(name)
        raise
    return version.number


def round_snapshot(fl_round: Round) -> dict[str, Any]:
    """What the live page and the operator API show of a round, as plain JSON."""
    updates = list(
        fl_round.updates.select_related("merchant")
        .order_by("created_at")
        .values("merchant__slug", "num_examples", "status", "created_at", "metrics")
    )
    version = getattr(fl_round, "result_version", None) if fl_round.status == "completed" else None
    return {
        "id": fl_round.pk,
        "model": fl_round.fl_model.slug,
        "number": fl_round.number,
        "status": fl_round.status,
        "min_updates": fl_round.min_updates,
        "target_updates": fl_round.target_updates,
        "participants": fl_round.participants.count(),
        "submitted": sum(1 for u in updates if u["status"] == Update.Status.ACCEPTED),
        "base_version": fl_round.base_version.number if fl_round.base_version else None,
        "result_version": version.number if version else None,
        "metrics": version.metrics if version else {},
        "opens_at": _iso(fl_round.opens_at),
        "opened_at": _iso(fl_round.opened_at),
        "deadline_at": _iso(fl_round.deadline_at),
        "closed_at": _iso(fl_round.closed_at),
        "finished_at": _iso(fl_round.finished_at),
        "failure_reason": fl_round.failure_reason,
        "updates": [
            {
                "merchant": u["merchant__slug"],
                "num_examples": u["num_examples"],
                "status": u["status"],
                "created_at": _iso(u["created_at"]),
                "metrics": u["metrics"],
            }
            for u in updates
        ],
    }


# --- internals ----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _accepted(fl_round: Round) -> int:
    return fl_round.updates.filter(status=Update.Status.ACCEPTED).count()


def _transition(fl_round: Round, old: str, new: str, **fields: Any) -> None:
    changed = Round.objects.filter(pk=fl_round.pk, status=old).update(status=new, **fields)
    if changed != 1:
        raise Conflict(f"The round is no longer {old}.", code="round_state_changed")
    fl_round.refresh_from_db()


def _begin_aggregation(
    fl_round: Round, *, reason: str, actor: AbstractBaseUser | None = None
) -> None:
    """Claim an open round for aggregation and enqueue the work after commit."""
    from rounds import tasks  # tasks import services; keep the cycle out of import time

    _transition(fl_round, Round.Status.OPEN, Round.Status.AGGREGATING, closed_at=timezone.now())
    audit.record(
        kind="round.closed",
        actor=actor,
        fl_round=fl_round,
        data={"reason": reason, "updates": _accepted(fl_round)},
    )
    _announce(fl_round, "round.aggregating")
    round_id = fl_round.pk
    transaction.on_commit(lambda: tasks.round_aggregate.delay(round_id))


def _fail(fl_round: Round, reason: str) -> None:
    now = timezone.now()
    changed = Round.objects.filter(
        pk=fl_round.pk, status__in=[Round.Status.OPEN, Round.Status.AGGREGATING]
    ).update(
        status=Round.Status.FAILED,
        failure_reason=reason,
        finished_at=now,
        closed_at=Coalesce(F("closed_at"), Value(now)),
    )
    if changed != 1:
        return
    fl_round.refresh_from_db()
    audit.record(kind="round.failed", fl_round=fl_round, data={"reason": reason})
    _announce(fl_round, "round.failed")
    _open_next_on_commit(fl_round.fl_model_id)


def _announce(fl_round: Round, event: str) -> None:
    broadcast.round_changed(round_snapshot(fl_round), event=event)


def _open_next_on_commit(fl_model_id: int) -> None:
    """When a round ends, the next due round of the same model opens without waiting for beat."""

    def open_next() -> None:
        nxt = (
            Round.objects.filter(
                fl_model_id=fl_model_id, status=Round.Status.SCHEDULED, opens_at__lte=timezone.now()
            )
            .order_by("opens_at", "number")
            .first()
        )
        if nxt is not None:
            round_open(fl_round=nxt)

    transaction.on_commit(open_next)


def _fedavg_from_storage(updates: list[Update]) -> dict[str, Any]:
    def stream():  # one update mapped at a time
        for update in updates:
            with artifacts.local_path(update.weights.name) as path:
                yield codec.open_arrays(path)

    return fedavg(stream(), [u.num_examples for u in updates])


def _weighted_metrics(updates: list[Update]) -> dict[str, float]:
    """Example-weighted mean of each metric that every update reported."""
    if not updates:
        return {}
    keys = set.intersection(*(set(u.metrics) for u in updates))
    total = sum(u.num_examples for u in updates)
    metrics = {
        key: sum(float(u.metrics[key]) * u.num_examples for u in updates) / total
        for key in sorted(keys)
    }
    metrics["num_examples"] = float(total)
    return metrics
