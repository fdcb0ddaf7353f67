"""What the dashboard home shows: active rounds, merchants online, the latest versions, and per
model the chart series (quality, participation, update norms, privacy budget) per round.

Every query is bounded: the series cover a model's last ``SERIES_ROUNDS`` finished rounds and
are computed with aggregate queries, never by loading every update or evaluation.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Case, Count, F, FloatField, OuterRef, Subquery, Sum, When
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from clients.models import Merchant
from clients.sdk.codec import CodecError
from rounds import broadcast
from rounds.aggregation import AggregationError
from rounds.aggregation.norms import delta_norms, norm_summary
from rounds.models import (
    Evaluation,
    FederatedModel,
    ModelVersion,
    Round,
    SecAggParticipant,
    Update,
)
from rounds.services.privacy import privacy_report

logger = logging.getLogger(__name__)

ONLINE_WINDOW = timedelta(minutes=5)  # a merchant seen this recently is online
SERIES_ROUNDS = 100
CHART_METRICS = ("loss", "accuracy", "auc")
ACTIVE_SHOWN = 20
ONLINE_SHOWN = 12
VERSIONS_SHOWN = 10
MODELS_SHOWN = 24
NORMS_BATCH = 3  # rounds whose update norms one beat run records
NORMS_KEY = "update_norm_mean"
_FINISHED = (Round.Status.COMPLETED, Round.Status.FAILED)


def dashboard_overview(*, now: datetime | None = None) -> dict[str, Any]:
    """The dashboard's tables and counters (the charts come from :func:`model_series`)."""
    from rounds.services.lifecycle import round_snapshot

    now = now or timezone.now()
    active = (
        Round.objects.filter(status__in=[Round.Status.OPEN, Round.Status.AGGREGATING])
        .select_related("fl_model", "base_version")
        .order_by("opened_at", "pk")[:ACTIVE_SHOWN]
    )
    upcoming = (
        Round.objects.filter(status=Round.Status.SCHEDULED)
        .select_related("fl_model")
        .order_by("opens_at", "pk")[:ACTIVE_SHOWN]
    )
    return {
        "active_rounds": [round_snapshot(fl_round) for fl_round in active],
        "upcoming_rounds": list(upcoming),
        "merchants": merchants_online(now=now),
        "versions": latest_versions(),
        "models": list(FederatedModel.objects.order_by("name")[:MODELS_SHOWN]),
    }


def submitted_count() -> Any:
    """Per round (``OuterRef("pk")``): its accepted updates, or for a secure-aggregation round
    its masked inputs (a round has only one kind, the other count is zero)."""
    accepted = (
        Update.objects.filter(fl_round=OuterRef("pk"), status=Update.Status.ACCEPTED)
        .order_by()
        .values("fl_round")
        .annotate(n=Count("pk"))
        .values("n")
    )
    masked = (
        SecAggParticipant.objects.filter(fl_round=OuterRef("pk"), masked_at__isnull=False)
        .order_by()
        .values("fl_round")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(accepted), 0) + Coalesce(Subquery(masked), 0)


def merchants_online(*, now: datetime | None = None) -> dict[str, Any]:
    """Active merchants, and those seen (an API call with one of their tokens) within
    ``ONLINE_WINDOW``."""
    since = (now or timezone.now()) - ONLINE_WINDOW
    online = Merchant.objects.filter(last_seen_at__gte=since)
    return {
        "active": Merchant.objects.filter(status=Merchant.Status.ACTIVE).count(),
        "online": online.count(),
        "window_minutes": int(ONLINE_WINDOW.total_seconds() // 60),
        "recent": list(online.order_by("-last_seen_at", "name")[:ONLINE_SHOWN]),
    }


def latest_versions(limit: int = VERSIONS_SHOWN) -> list[dict[str, Any]]:
    versions = list(
        ModelVersion.objects.select_related("fl_model", "produced_by").order_by(
            "-created_at", "-pk"
        )[:limit]
    )
    means = evaluation_means([v.pk for v in versions])
    return [
        {
            "version": version,
            "round": version.produced_by,
            "metrics": {k: version.metrics[k] for k in CHART_METRICS if k in version.metrics},
            "evaluation": means.get(version.pk, {}).get("metrics", {}),
        }
        for version in versions
    ]


def evaluation_means(version_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per version: evaluators, examples and the example-weighted mean of each chart metric
    that every evaluator reported (as ``evaluation_summary`` computes it), in one query."""
    if not version_ids:
        return {}
    sums: dict[str, Any] = {"evaluators": Count("pk"), "examples": Sum("num_examples")}
    for key in CHART_METRICS:
        value = Cast(KT(f"metrics__{key}"), FloatField())
        sums[f"{key}_sum"] = Sum(value * F("num_examples"), output_field=FloatField())
        sums[f"{key}_n"] = Count(Case(When(metrics__has_key=key, then=1)))
    rows = (
        Evaluation.objects.filter(version_id__in=version_ids)
        .order_by()
        .values("version_id")
        .annotate(**sums)
    )
    return {
        row["version_id"]: {
            "evaluators": row["evaluators"],
            "num_examples": row["examples"],
            "metrics": {
                key: row[f"{key}_sum"] / row["examples"]
                for key in CHART_METRICS
                if row[f"{key}_n"] == row["evaluators"] and row[f"{key}_sum"] is not None
            },
        }
        for row in rows
    }


def model_series(*, fl_model: FederatedModel, limit: int = SERIES_ROUNDS) -> dict[str, Any]:
    """Chart data for one model, one column per finished round (completed or failed), oldest
    first; ``None`` where a round has no value (uPlot draws a gap)."""
    invited = (
        Round.participants.through.objects.filter(round_id=OuterRef("pk"))
        .order_by()
        .values("round_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    rounds = list(
        fl_model.rounds.filter(status__in=_FINISHED)
        .annotate(invited=Coalesce(Subquery(invited), 0), submitted=submitted_count())
        .order_by("-number")
        .values("pk", "number", "status", "invited", "submitted")[:limit]
    )[::-1]
    versions = {
        v["produced_by_id"]: v
        for v in ModelVersion.objects.filter(produced_by_id__in=[r["pk"] for r in rounds]).values(
            "pk", "number", "produced_by_id", "metrics", "aggregation"
        )
    }
    means = evaluation_means([v["pk"] for v in versions.values()])

    def column(pick: Any) -> list[Any]:
        out = []
        for r in rounds:
            version = versions.get(r["pk"])
            out.append(pick(version) if version is not None else None)
        return out

    def evaluated(key: str) -> Any:
        return lambda v: means.get(v["pk"], {}).get("metrics", {}).get(key)

    series: dict[str, Any] = {
        "model": fl_model.slug,
        "name": fl_model.name,
        "rounds": [r["number"] for r in rounds],
        "status": [r["status"] for r in rounds],
        "version": column(lambda v: v["number"]),
        "invited": [r["invited"] for r in rounds],
        "submitted": [r["submitted"] for r in rounds],
        "norm_mean": column(lambda v: v["aggregation"].get("update_norm_mean")),
        "norm_max": column(
            lambda v: v["aggregation"].get("update_norm_max", v["aggregation"].get("max_norm_seen"))
        ),
        "privacy": _privacy_series(fl_model),
    }
    for key in CHART_METRICS:
        series[f"train_{key}"] = column(lambda v, key=key: _number(v["metrics"].get(key)))
        series[f"eval_{key}"] = column(evaluated(key))
    return series


def versions_record_update_norms(*, limit: int = NORMS_BATCH) -> int:
    """Beat's periodic work for the norms chart: record the update norms of up to ``limit``
    completed rounds whose versions lack them, newest first. Returns how many it recorded.

    The norms are a second read of every update, so they are computed here, seconds after the
    version is published, rather than between round close and publication. Rounds with
    differential privacy are left out (raw norms are not private, and a version's aggregation
    info reaches merchants with the next round), as are secure-aggregation rounds (the server
    never sees a single update)."""
    pending = (
        Round.objects.filter(
            status=Round.Status.COMPLETED, privacy={}, secagg={}, result_version__isnull=False
        )
        .exclude(result_version__aggregation__has_key=NORMS_KEY)
        .order_by("-finished_at", "-pk")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(version_record_update_norms(round_id=round_id) is not None for round_id in pending)


def version_record_update_norms(*, round_id: int) -> dict[str, float | None] | None:
    """Add the mean and largest L2 norm of the accepted updates' changes to the aggregation
    info of the version a completed round produced, and announce it (``version.norms``).
    Idempotent; None when there is nothing to do. Updates that cannot be read any more are
    recorded as unknown (None), so they are not retried for ever."""
    from rounds.services.lifecycle import _accepted_updates, _opened, round_snapshot

    fl_round = (
        Round.objects.select_related("fl_model", "base_version")
        .filter(pk=round_id, status=Round.Status.COMPLETED)
        .first()
    )
    if fl_round is None or fl_round.privacy or fl_round.secagg:
        return None
    version = ModelVersion.objects.filter(produced_by=fl_round).first()
    if version is None or NORMS_KEY in version.aggregation:
        return None
    summary: dict[str, float | None] = {NORMS_KEY: None, "update_norm_max": None}
    try:
        with _opened(fl_round, _accepted_updates(fl_round)) as (arrays, current, _):
            if arrays:
                summary |= norm_summary(delta_norms(arrays, reference=current))
    except (AggregationError, CodecError, OSError):
        logger.warning("could not compute the update norms of round %s", round_id, exc_info=True)
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if NORMS_KEY in locked.aggregation:  # another run was quicker
            return None
        ModelVersion.objects.filter(pk=version.pk).update(
            aggregation={**locked.aggregation, **summary}
        )
        broadcast.round_changed(round_snapshot(fl_round), event="version.norms")
    return summary


def _privacy_series(fl_model: FederatedModel) -> dict[str, Any]:
    report = privacy_report(fl_model)
    if not report["enabled"]:
        return {"enabled": False}
    ledger = report["ledger"][-SERIES_ROUNDS:]
    return {
        "enabled": True,
        "epsilon_budget": report["epsilon_budget"],
        "epsilon_spent": report["epsilon_spent"],
        "delta": report["delta"],
        "rounds": [entry["round"] for entry in ledger],
        "epsilon": [entry["epsilon_after"] for entry in ledger],
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
