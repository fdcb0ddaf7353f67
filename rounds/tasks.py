"""Celery tasks: ids (and small JSON plans) in, one service call each. No arrays travel here."""

from __future__ import annotations

from typing import Any

from celery import chord
from django.conf import settings
from django.db import OperationalError

from flportal.celery import app
from rounds import services
from rounds.services import dashboard

RETRYING = {
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "max_retries": 5,
}


@app.task(ignore_result=True, **RETRYING)
def round_aggregate(round_id: int) -> None:
    """Aggregate a closed round: in this task for small models, else as a chord of slices."""
    plan = services.round_aggregation_plan(
        round_id=round_id,
        min_params=settings.FLPORTAL_PARALLEL_MIN_PARAMS,
        slices=settings.FLPORTAL_AGGREGATION_SLICES,
    )
    if plan is None:
        services.round_aggregate(round_id=round_id)
        return
    header = [round_aggregate_slice.s(round_id, spans, plan["scales"]) for spans in plan["spans"]]
    body = round_aggregate_finish.s(round_id, plan).on_error(round_aggregation_failed.si(round_id))
    chord(header)(body)


@app.task(**RETRYING)
def round_aggregate_slice(
    round_id: int, spans: dict[str, list[int]], scales: list[float] | None
) -> str | None:
    return services.round_aggregate_slice(round_id=round_id, spans=spans, scales=scales)


@app.task(ignore_result=True, **RETRYING)
def round_aggregate_finish(parts: list[str | None], round_id: int, plan: dict[str, Any]) -> None:
    services.round_aggregate_finish(round_id=round_id, plan=plan, parts=parts)


@app.task(ignore_result=True)
def round_aggregation_failed(round_id: int) -> None:
    services.round_aggregation_failed(round_id=round_id, reason="a parallel slice failed")


@app.task(ignore_result=True, autoretry_for=(OperationalError,), max_retries=2)
def rounds_tick() -> dict[str, int]:
    return services.rounds_tick()


@app.task(ignore_result=True)
def versions_record_update_norms() -> int:
    """Beat: the update norms of the latest published versions, for the dashboard's chart."""
    return dashboard.versions_record_update_norms()
