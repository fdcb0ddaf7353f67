"""What the live round page shows: each participant's status, counts per status, the round's
event feed, the version it produced; and the record of a participant downloading its weights.

Everything here is bounded whatever the number of participants: counts are aggregate queries,
the per-merchant list holds the ``PARTICIPANTS_SHOWN`` most recently active participants, the
feed the latest ``FEED_EVENTS`` events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, QuerySet, Value

from clients.models import Merchant
from rounds import audit, broadcast
from rounds.models import Event, ModelVersion, Round, SecAggParticipant, Update
from rounds.services.dashboard import evaluation_means

PARTICIPANTS_SHOWN = 200
FEED_EVENTS = 50
DOWNLOADED = "weights.downloaded"
STATUSES = ("invited", "downloaded", "submitted", "rejected", "dropped")
# Participants who have not submitted by then are "dropped" once the round stops taking updates.
_CLOSED = frozenset(Round.Status) - {Round.Status.SCHEDULED, Round.Status.OPEN}


def round_download_record(*, merchant: Merchant, version: ModelVersion) -> list[int]:
    """Note that ``merchant`` fetched ``version``'s weights, for each open round it is invited
    to that trains from this version. Only the first download per merchant and round is
    recorded (and broadcast); a repeat costs one query. Returns the round ids recorded."""
    already = Event.objects.filter(fl_round=OuterRef("pk"), merchant=merchant, kind=DOWNLOADED)
    round_ids = list(
        Round.objects.filter(status=Round.Status.OPEN, base_version=version, participants=merchant)
        .exclude(Exists(already))
        .values_list("pk", flat=True)
    )
    recorded = []
    for round_id in round_ids:
        with transaction.atomic():  # the round's row lock orders racing first downloads
            fl_round = (
                Round.objects.select_for_update(of=("self",))
                .select_related("fl_model", "base_version")
                .filter(pk=round_id, status=Round.Status.OPEN)
                .first()
            )
            if (
                fl_round is None
                or Event.objects.filter(
                    fl_round=fl_round, merchant=merchant, kind=DOWNLOADED
                ).exists()
            ):
                continue
            audit.record(
                kind=DOWNLOADED,
                merchant=merchant,
                fl_round=fl_round,
                actor_label=f"merchant:{merchant.slug}",
                data={"version": version.number},
            )
            _announce(fl_round, DOWNLOADED)
            recorded.append(round_id)
    return recorded


def _submissions(fl_round: Round) -> QuerySet:
    """The round's submissions with merchant_id, status, reason, created_at, num_examples: its
    updates, or for a secure-aggregation round its masked inputs (whose examples stay masked)."""
    if not fl_round.secagg:
        return Update.objects.filter(fl_round=fl_round)
    return SecAggParticipant.objects.filter(fl_round=fl_round, masked_at__isnull=False).annotate(
        status=Value(Update.Status.ACCEPTED.value),
        reason=Value(""),
        created_at=F("masked_at"),
        num_examples=Value(None, output_field=IntegerField()),
    )


def round_counts(fl_round: Round) -> dict[str, int]:
    """How many participants are in each status; the statuses exclude each other and add up to
    the number invited. ``invited`` counts those who have done nothing yet."""
    invited = fl_round.participants.count()
    if fl_round.secagg:
        by_status = {Update.Status.ACCEPTED: _submissions(fl_round).count()}
    else:
        by_status = dict(
            Update.objects.filter(fl_round=fl_round)
            .order_by()
            .values("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
    submitted = by_status.get(Update.Status.ACCEPTED, 0)
    rejected = by_status.get(Update.Status.REJECTED, 0)
    idle = max(0, invited - submitted - rejected)
    if fl_round.status in _CLOSED:
        return _counts(submitted=submitted, rejected=rejected, dropped=idle)
    downloaded = (
        Event.objects.filter(fl_round=fl_round, kind=DOWNLOADED, merchant__isnull=False)
        .exclude(merchant_id__in=_submissions(fl_round).values("merchant_id"))
        .order_by()
        .values("merchant_id")
        .distinct()
        .count()
    )
    downloaded = min(downloaded, idle)
    return _counts(
        invited=idle - downloaded, downloaded=downloaded, submitted=submitted, rejected=rejected
    )


def round_participants(
    fl_round: Round, *, merchant_ids: list[int] | None = None, limit: int = PARTICIPANTS_SHOWN
) -> list[dict[str, Any]]:
    """One row per participant: the most recently active first (then by name), at most
    ``limit``; or exactly the participants in ``merchant_ids``."""
    if merchant_ids is None:
        merchant_ids = _recently_active(fl_round, limit)
        idle = limit - len(merchant_ids)
        if idle > 0:
            merchant_ids += list(
                fl_round.participants.exclude(pk__in=merchant_ids)
                .order_by("name", "pk")
                .values_list("pk", flat=True)[:idle]
            )
    merchant_ids = list(merchant_ids)[:limit]
    names = {
        pk: (slug, name)
        for pk, slug, name in fl_round.participants.filter(pk__in=merchant_ids)
        .order_by()
        .values_list("pk", "slug", "name")
    }
    updates = {
        u["merchant_id"]: u
        for u in _submissions(fl_round)
        .filter(merchant_id__in=names)
        .values("merchant_id", "status", "reason", "created_at", "num_examples")
    }
    downloads: dict[int, datetime] = {}
    for merchant_id, at in (
        Event.objects.filter(fl_round=fl_round, kind=DOWNLOADED, merchant_id__in=names)
        .order_by("created_at")
        .values_list("merchant_id", "created_at")
    ):
        downloads.setdefault(merchant_id, at)
    rows = [
        _participant_row(fl_round, *names[pk], updates.get(pk), downloads.get(pk))
        for pk in merchant_ids
        if pk in names
    ]
    rows.sort(key=lambda row: row["activity_at"] or "", reverse=True)  # stable: names stay sorted
    return rows


def round_feed(
    fl_round: Round, *, after_id: int = 0, limit: int = FEED_EVENTS
) -> list[dict[str, Any]]:
    """The round's events, newest first: the latest ``limit``, or those after ``after_id``."""
    events = (
        Event.objects.filter(fl_round=fl_round, pk__gt=after_id)
        .select_related("merchant")
        .order_by("-pk")[:limit]
    )
    return [feed_entry(event) for event in events]


def feed_entry(event: Event) -> dict[str, Any]:
    return {
        "id": event.pk,
        "kind": event.kind,
        "at": event.created_at.isoformat(),
        "actor": event.actor_label,
        "merchant": event.merchant.slug if event.merchant else None,
        "text": describe(event),
    }


def describe(event: Event) -> str:
    """One line a person reads in the event log."""
    data = event.data or {}
    who = event.merchant.slug if event.merchant else event.actor_label or "system"
    texts = {
        "round.scheduled": lambda: f"Scheduled by {event.actor_label or 'system'}",
        "round.opened": lambda: (
            f"Opened: {data.get('participants', 0)} merchants invited, base version "
            f"v{data.get('base_version') or '-'}"
        ),
        DOWNLOADED: lambda: f"{who} downloaded the weights (v{data.get('version', '-')})",
        "update.accepted": lambda: (
            f"{who} submitted an update ({data.get('num_examples', '?')} examples"
            + _metrics_text(data.get("metrics"))
            + ")"
        ),
        "update.rejected": lambda: f"{who}'s update was rejected: {data.get('reason', '')}",
        "round.closed": lambda: (
            f"Closed ({data.get('reason', 'closed')}) with {data.get('updates', '?')} "
            "updates; aggregating"
        ),
        "round.completed": lambda: (
            f"Completed: version v{data.get('version')} from {data.get('participants')} updates"
            + _metrics_text(data.get("metrics"), prefix=" ")
        ),
        "version.created": lambda: (
            f"Version v{data.get('version')} stored (sha256 {str(data.get('sha256', ''))[:12]})"
        ),
        "round.failed": lambda: f"Failed: {data.get('reason', '')}",
        "round.cancelled": lambda: f"Cancelled by {event.actor_label or 'system'}",
        "secagg.phase": lambda: (
            f"Secure aggregation: {data.get('phase')} phase, {data.get('members', '?')} members"
            + (f", {data['dropped']} dropped" if data.get("dropped") else "")
        ),
        "secagg.advertise": lambda: f"{who} advertised its mask key",
        "secagg.share": lambda: f"{who} shared its secrets (sealed for each holder)",
        "secagg.mask": lambda: f"{who} uploaded its masked input",
        "secagg.unmask": lambda: f"{who} revealed the shares needed for unmasking",
        "secagg.excluded": lambda: (
            f"Left out of secure aggregation ({data.get('reason', '')}): "
            + ", ".join(data.get("merchants", []))
        ),
        "evaluation.received": lambda: (
            f"{who} evaluated v{data.get('version')} on {data.get('num_examples', '?')} "
            "held-out examples" + _metrics_text(data.get("metrics"), prefix=": ")
        ),
    }
    text = texts.get(event.kind)
    return text() if text else event.kind


def round_result(fl_round: Round) -> dict[str, Any] | None:
    """The version a completed round produced: number, strategy, aggregation info, training
    metrics (example-weighted, as reported with the updates) and the federated evaluation."""
    if fl_round.status != Round.Status.COMPLETED:
        return None
    version = ModelVersion.objects.filter(produced_by=fl_round).first()
    if version is None:
        return None
    evaluation = evaluation_means([version.pk]).get(version.pk)
    return {
        "version": version.number,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "created_at": version.created_at.isoformat(),
        "strategy": version.strategy,
        "aggregation": version.aggregation,
        "metrics": version.metrics,
        "evaluation": evaluation or {"evaluators": 0, "metrics": {}},
    }


def round_live(fl_round: Round) -> dict[str, Any]:
    """Everything the live round page shows, as plain JSON: sent on connect and rendered by the
    server for the page without JavaScript."""
    from rounds.services.lifecycle import round_snapshot

    feed = round_feed(fl_round)
    return {
        "round": round_snapshot(fl_round),
        "counts": round_counts(fl_round),
        "merchants": round_participants(fl_round),
        "feed": feed,
        "last_event_id": feed[0]["id"] if feed else 0,
        "result": round_result(fl_round),
    }


def round_live_changes(
    fl_round: Round, *, after_id: int, status_before: str | None
) -> dict[str, Any]:
    """What changed on the live page since event ``after_id``: new feed entries, the rows of
    the merchants they concern (all rows, ``replace``, when the round's status changed, since
    that can turn every waiting participant into "dropped"), fresh counts and the result."""
    feed = round_feed(fl_round, after_id=after_id)
    replace = fl_round.status != status_before
    if replace:
        merchants = round_participants(fl_round)
    else:
        touched = list(dict.fromkeys(e["merchant"] for e in feed if e["merchant"]))
        ids = list(fl_round.participants.filter(slug__in=touched).values_list("pk", flat=True))
        merchants = round_participants(fl_round, merchant_ids=ids) if ids else []
    return {
        "counts": round_counts(fl_round),
        "merchants": merchants,
        "replace": replace,
        "feed": feed,
        "last_event_id": feed[0]["id"] if feed else after_id,
        "result": round_result(fl_round),
    }


# --- internals ----------------------------------------------------------------------------


def _counts(**values: int) -> dict[str, int]:
    return {status: values.get(status, 0) for status in STATUSES}


def _announce(fl_round: Round, event: str) -> None:
    from rounds.services.lifecycle import round_snapshot

    broadcast.round_changed(round_snapshot(fl_round), event=event)


def _recently_active(fl_round: Round, limit: int) -> list[int]:
    """The ``limit`` participants who submitted or downloaded most recently."""
    latest: dict[int, datetime] = {}
    updates = (
        _submissions(fl_round)
        .order_by("-created_at", "-pk")
        .values_list("merchant_id", "created_at")[:limit]
    )
    downloads = (
        Event.objects.filter(fl_round=fl_round, kind=DOWNLOADED, merchant__isnull=False)
        .order_by("-created_at", "-pk")
        .values_list("merchant_id", "created_at")[:limit]
    )
    for merchant_id, at in [*updates, *downloads]:
        if merchant_id not in latest or at > latest[merchant_id]:
            latest[merchant_id] = at
    return sorted(latest, key=lambda pk: latest[pk], reverse=True)[:limit]


def _participant_row(
    fl_round: Round,
    slug: str,
    name: str,
    update: dict[str, Any] | None,
    downloaded_at: datetime | None,
) -> dict[str, Any]:
    if update is not None:
        status = "submitted" if update["status"] == Update.Status.ACCEPTED else "rejected"
    elif fl_round.status in _CLOSED:
        status = "dropped"
    else:
        status = "downloaded" if downloaded_at else "invited"
    submitted_at = update["created_at"] if update else None
    activity = max((t for t in (submitted_at, downloaded_at) if t), default=None)
    return {
        "merchant": slug,
        "name": name,
        "status": status,
        "reason": update["reason"] if update else "",
        "num_examples": update["num_examples"] if update else None,
        "downloaded_at": _iso(downloaded_at),
        "submitted_at": _iso(submitted_at),
        "activity_at": _iso(activity),
    }


def _metrics_text(metrics: Any, *, prefix: str = ", ") -> str:
    if not isinstance(metrics, dict) or not metrics:
        return ""
    shown = [
        f"{key} {value:.4g}"
        for key, value in metrics.items()
        if key != "num_examples" and isinstance(value, int | float)
    ][:4]
    return prefix + ", ".join(shown) if shown else ""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
