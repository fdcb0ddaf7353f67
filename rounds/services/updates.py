"""Merchant updates: validated, stored once, counted towards the round's quorum."""

from __future__ import annotations

import math
import re
from typing import Any

from django.db import IntegrityError, transaction

from clients.models import Merchant
from clients.sdk import codec
from flportal.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from rounds import artifacts, audit
from rounds.models import Round, Update
from rounds.services.fl_models import fl_model_specs
from rounds.services.lifecycle import _accepted, _announce, _begin_aggregation

MAX_METRICS = 32
MAX_EXAMPLES = 10**12
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


def round_for_merchant(*, round_id: int, merchant: Merchant) -> Round:
    """A round the merchant was invited to; anything else is indistinguishable from absent."""
    fl_round = (
        Round.objects.select_related("fl_model", "base_version")
        .filter(pk=round_id, participants=merchant)
        .first()
    )
    if fl_round is None:
        raise NotFound(f"No round {round_id} for this merchant.", code="round_not_found")
    return fl_round


def parse_num_examples(raw: Any) -> int:
    text = str(raw) if raw is not None else ""
    if not (text.isascii() and text.isdigit() and len(text) <= 13):
        raise ValidationFailed(
            "num_examples must be a positive integer.", code="invalid_num_examples"
        )
    value = int(text)
    if not 1 <= value <= MAX_EXAMPLES:
        raise ValidationFailed(
            f"num_examples must be within [1, {MAX_EXAMPLES}].", code="invalid_num_examples"
        )
    return value


def parse_metrics(raw: Any) -> dict[str, float]:
    """Scalar metrics only: a flat object of at most 32 finite numbers."""
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, dict):
        raise ValidationFailed(
            "metrics must be an object of name → number.", code="invalid_metrics"
        )
    if len(raw) > MAX_METRICS:
        raise ValidationFailed(f"At most {MAX_METRICS} metrics.", code="invalid_metrics")
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _METRIC_NAME.match(key):
            raise ValidationFailed(f"Invalid metric name {key!r}.", code="invalid_metrics")
        try:
            number = math.nan if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):  # e.g. a JSON integer beyond float range
            number = math.nan
        if not isinstance(value, int | float) or not math.isfinite(number):
            raise ValidationFailed(
                f"Metric {key!r} must be a finite number.", code="invalid_metrics"
            )
        metrics[key] = number
    return metrics


def updates_expected_specs(fl_round: Round) -> list[codec.TensorSpec]:
    return fl_model_specs(fl_round.fl_model)


def check_can_submit(*, fl_round: Round, merchant: Merchant) -> None:
    """The cheap checks, done before a byte of the body is read."""
    if not fl_round.participants.filter(pk=merchant.pk).exists():
        raise NotFound(f"No round {fl_round.pk} for this merchant.", code="round_not_found")
    if not merchant.is_active:
        raise PermissionDenied(f"Merchant is {merchant.status}.", code="merchant_inactive")
    if fl_round.secagg:
        raise Conflict(
            "This round uses secure aggregation: take part through its secagg phases; a plain "
            "update would reveal your change to the server.",
            code="secure_aggregation_required",
        )
    if fl_round.status != Round.Status.OPEN:
        existing = Update.objects.filter(fl_round=fl_round, merchant=merchant).exists()
        if not existing:  # a retry of an accepted upload is still answered after closing
            raise Conflict(f"The round is {fl_round.status}, not open.", code="round_not_open")


def update_submit(
    *,
    fl_round: Round,
    merchant: Merchant,
    blob: artifacts.Blob,
    num_examples: int,
    metrics: dict[str, float],
) -> tuple[Update, bool]:
    """Accept a merchant's update. Returns ``(update, created)``; a retried identical upload
    returns the stored update with ``created=False``. Nothing is stored on any failure."""
    existing = Update.objects.filter(fl_round=fl_round, merchant=merchant).first()
    if existing is not None:
        return _retry_or_conflict(existing, blob, num_examples)
    check_can_submit(fl_round=fl_round, merchant=merchant)
    try:
        artifacts.validate(blob, updates_expected_specs(fl_round))
    except codec.CodecError as exc:
        raise ValidationFailed(exc.detail, code=exc.code) from None
    name = artifacts.store(
        blob, f"updates/{fl_round.pk}/{merchant.slug}-{blob.sha256[:16]}.safetensors"
    )
    try:
        with transaction.atomic():
            locked = Round.objects.select_for_update().get(pk=fl_round.pk)
            if locked.status != Round.Status.OPEN:
                raise Conflict(f"The round is {locked.status}, not open.", code="round_not_open")
            update = Update.objects.create(
                fl_round=locked,
                merchant=merchant,
                weights=name,
                sha256=blob.sha256,
                size_bytes=blob.size,
                num_examples=num_examples,
                metrics=metrics,
            )
            audit.record(
                kind="update.accepted",
                merchant=merchant,
                fl_round=locked,
                data={"num_examples": num_examples, "sha256": blob.sha256, "metrics": metrics},
            )
            if _accepted(locked) >= locked.target_updates:
                _begin_aggregation(locked, reason="target reached")
            else:
                _announce(locked, "update.accepted")
    except IntegrityError:
        artifacts.delete(name)
        existing = Update.objects.filter(fl_round=fl_round, merchant=merchant).first()
        if existing is None:
            raise
        return _retry_or_conflict(existing, blob, num_examples)
    except Exception:
        artifacts.delete(name)
        raise
    return update, True


def _retry_or_conflict(
    existing: Update, blob: artifacts.Blob, num_examples: int
) -> tuple[Update, bool]:
    if existing.sha256 == blob.sha256 and existing.num_examples == num_examples:
        return existing, False
    raise Conflict(
        "This merchant already submitted a different update to this round.",
        code="update_already_submitted",
    )
