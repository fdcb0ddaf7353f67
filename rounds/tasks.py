"""Celery tasks: ids in, one service call, nothing else."""

from __future__ import annotations

from django.db import OperationalError

from flportal.celery import app
from rounds import services


@app.task(
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
    ignore_result=True,
)
def round_aggregate(round_id: int) -> int | None:
    return services.round_aggregate(round_id=round_id)


@app.task(ignore_result=True, autoretry_for=(OperationalError,), max_retries=2)
def rounds_tick() -> dict[str, int]:
    return services.rounds_tick()


__all__ = ["round_aggregate", "rounds_tick"]
