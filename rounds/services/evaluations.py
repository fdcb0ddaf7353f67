"""Federated evaluation: merchants score each new version on their own held-out data; the
portal combines the scores per version, weighted by examples, without seeing any data."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef

from clients.models import Merchant
from flportal.errors import Conflict, NotFound
from rounds import audit, broadcast
from rounds.models import Evaluation, FederatedModel, ModelVersion, Round, Update

PENDING_LIMIT = 20


def evaluations_pending(*, merchant: Merchant) -> list[ModelVersion]:
    """Versions produced by rounds this merchant contributed to, not yet evaluated by it."""
    contributed = Update.objects.filter(
        fl_round=OuterRef("produced_by"), merchant=merchant, status=Update.Status.ACCEPTED
    )
    done = Evaluation.objects.filter(version=OuterRef("pk"), merchant=merchant)
    return list(
        ModelVersion.objects.select_related("fl_model")
        .filter(Exists(contributed), ~Exists(done), produced_by__status=Round.Status.COMPLETED)
        .order_by("-created_at")[:PENDING_LIMIT]
    )


def version_for_merchant(*, merchant: Merchant, slug: str, number: int) -> ModelVersion:
    """A version this merchant may read: one of a model it has been invited to train."""
    version = (
        ModelVersion.objects.select_related("fl_model", "produced_by")
        .filter(fl_model__slug=slug, number=number, fl_model__rounds__participants=merchant)
        .first()
    )
    if version is None:
        raise NotFound("No such version for this merchant.", code="version_not_found")
    return version


def evaluation_submit(
    *, version: ModelVersion, merchant: Merchant, num_examples: int, metrics: dict[str, float]
) -> tuple[Evaluation, bool]:
    """Record a merchant's evaluation once; an identical retry returns it (created False)."""
    if (
        version.produced_by is None
        or not version.produced_by.updates.filter(
            merchant=merchant, status=Update.Status.ACCEPTED
        ).exists()
    ):
        raise Conflict(
            "Only merchants who contributed to a version evaluate it.", code="not_a_contributor"
        )
    existing = Evaluation.objects.filter(version=version, merchant=merchant).first()
    if existing is not None:
        return _retry_or_conflict(existing, num_examples, metrics)
    try:
        with transaction.atomic():
            evaluation = Evaluation.objects.create(
                version=version, merchant=merchant, num_examples=num_examples, metrics=metrics
            )
            audit.record(
                kind="evaluation.received",
                merchant=merchant,
                fl_round=version.produced_by,
                data={"version": version.number, "num_examples": num_examples, "metrics": metrics},
            )
            broadcast.round_changed(_evaluation_event(version), event="evaluation.received")
    except IntegrityError:
        existing = Evaluation.objects.filter(version=version, merchant=merchant).first()
        if existing is None:
            raise
        return _retry_or_conflict(existing, num_examples, metrics)
    return evaluation, True


def evaluation_summary(*, fl_model: FederatedModel) -> list[dict[str, Any]]:
    """Per version: the example-weighted mean of every metric all evaluators reported, and each
    merchant's own numbers (for per-merchant curves)."""
    by_version: dict[int, list[Evaluation]] = defaultdict(list)
    evaluations = Evaluation.objects.select_related("merchant", "version").filter(
        version__fl_model=fl_model
    )
    for evaluation in evaluations:
        by_version[evaluation.version.number].append(evaluation)
    return [
        {
            "version": number,
            "evaluators": len(items),
            "num_examples": sum(e.num_examples for e in items),
            "metrics": weighted_metrics(items),
            "merchants": {
                e.merchant.slug: {"num_examples": e.num_examples, **e.metrics} for e in items
            },
        }
        for number, items in sorted(by_version.items())
    ]


def weighted_metrics(items: list[Evaluation]) -> dict[str, float]:
    if not items:
        return {}
    keys = set.intersection(*(set(e.metrics) for e in items))
    total = sum(e.num_examples for e in items)
    return {
        k: sum(float(e.metrics[k]) * e.num_examples for e in items) / total for k in sorted(keys)
    }


def _evaluation_event(version: ModelVersion) -> dict[str, Any]:
    from rounds.services.lifecycle import round_snapshot

    fl_round = Round.objects.select_related("fl_model", "base_version").get(
        pk=version.produced_by_id
    )
    snapshot = round_snapshot(fl_round)
    evaluations = list(version.evaluations.all())
    snapshot["evaluation"] = {
        "evaluators": len(evaluations),
        "metrics": weighted_metrics(evaluations),
    }
    return snapshot


def _retry_or_conflict(
    existing: Evaluation, num_examples: int, metrics: dict[str, float]
) -> tuple[Evaluation, bool]:
    if existing.num_examples == num_examples and existing.metrics == metrics:
        return existing, False
    raise Conflict(
        "This merchant already evaluated this version differently.",
        code="evaluation_already_submitted",
    )
