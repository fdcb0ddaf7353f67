"""The round state machine: scheduled → open → aggregating → completed | failed | cancelled.

Every transition is a conditional update (``filter(pk=…, status=old).update(status=new)``) that
proceeds only if it changed exactly one row, so racing actors — two uploads, a deadline tick and
the last upload, two workers running the same task — cannot both win. Work is enqueued and
events are broadcast only after the transaction commits.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Max, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from clients.models import Merchant
from clients.sdk import codec
from clients.sdk.privacy import WITHIN_CLIP_METRIC
from flportal.errors import Conflict, NotFound, ValidationFailed
from rounds import aggregation, artifacts, audit, broadcast
from rounds.aggregation import AggregationError
from rounds.models import FederatedModel, ModelVersion, Round, Update
from rounds.services import privacy, secagg
from rounds.services.fl_models import fl_model_specs, version_create, version_latest
from rounds.services.selection import parse_selection, select_participants

logger = logging.getLogger(__name__)

ACTIVE_STATUSES = (Round.Status.OPEN, Round.Status.AGGREGATING)
# Per-merchant flags that must not be published in the version's metrics in the clear.
PRIVATE_METRICS = frozenset({WITHIN_CLIP_METRIC})
SNAPSHOT_UPDATES = 100  # the most recent updates a snapshot lists (the count is exact)
MAX_DURATION = 30 * 24 * 3600


def round_training_hints(fl_round: Round) -> dict[str, Any]:
    """What clients are told about local training: the model's hints, plus FedProx's μ."""
    hints = dict(fl_round.fl_model.training_hints)
    if fl_round.strategy == "fedprox":
        hints["proximal_mu"] = fl_round.strategy_params.get("mu", hints.get("proximal_mu", 0.0))
    hints |= privacy.client_hints(fl_round.privacy)  # dp_clip_norm for client-side clipping
    return hints


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
    selection: Any = None,
    series: uuid.UUID | None = None,
    actor: AbstractBaseUser | None = None,
) -> Round:
    """Schedule a round. It opens at ``opens_at`` (default now) once no other round of the same
    model is running, so creating several rounds at once schedules a series. ``selection`` is
    the participant policy applied when it opens (``rounds.services.selection``)."""
    policy = parse_selection(selection)
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
    needed = aggregation.min_updates(fl_model.strategy, fl_model.strategy_params)
    if min_updates < needed:
        raise ValidationFailed(
            f"{aggregation.LABELS[fl_model.strategy]} with these parameters needs at least "
            f"{needed} updates; min_updates is {min_updates}.",
            code="quorum_too_small",
        )
    if fl_model.privacy:
        waiting = fl_model.rounds.filter(status=Round.Status.SCHEDULED).count()
        privacy.check_budget(fl_model, q=1.0, extra=waiting + 1)
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
            selection=policy,
            series=series,
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        audit.record(
            kind="round.scheduled",
            actor=actor,
            fl_round=fl_round,
            data={
                "opens_at": opens_at.isoformat(),
                "selection": policy,
                **({"series": str(series)} if series else {}),
            },
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
        fl_model = FederatedModel.objects.get(pk=fl_round.fl_model_id)
        chosen = select_participants(policy=fl_round.selection)  # cryptographically random
        eligible = chosen.eligible
        round_privacy: dict[str, Any] = {}
        if fl_model.privacy:
            # The invited merchants are a uniformly random subset of the eligible ones, drawn
            # from the OS's cryptographic source and never published to merchants: the round is
            # accounted at sampling rate q = invited / eligible (1 when everyone is invited),
            # with dp-accounting's Poisson-sampled Gaussian, the usual approximation of uniform
            # fixed-size sampling in DP-FedAvg (McMahan et al. 2018).
            q = min(1.0, chosen.invited / chosen.eligible) if chosen.eligible else 1.0
            try:
                spent = privacy.check_budget(fl_model, q=q)
            except Conflict as exc:  # refused before it opens: nothing is released
                refused = Round.objects.filter(
                    pk=fl_round.pk, status=Round.Status.SCHEDULED, opens_at__lte=now
                ).update(status=Round.Status.FAILED, failure_reason=exc.detail, finished_at=now)
                if refused != 1:
                    return False
                fl_round.refresh_from_db()
                audit.record(kind="round.failed", fl_round=fl_round, data={"reason": exc.detail})
                _announce(fl_round, "round.failed")
                return False
            round_privacy = privacy.round_privacy(
                fl_model, base_version=base_version, q=q, eligible=eligible, spent=spent
            )
        claimed = Round.objects.filter(
            pk=fl_round.pk, status=Round.Status.SCHEDULED, opens_at__lte=now
        ).update(
            status=Round.Status.OPEN,
            opened_at=now,
            deadline_at=deadline,
            base_version=base_version,
            strategy=fl_model.strategy,  # fixed for this round, whatever changes later
            strategy_params=fl_model.strategy_params,
            privacy=round_privacy,
            secagg=fl_model.secure_aggregation,
        )
        if claimed != 1:
            return False
        fl_round.refresh_from_db()
        participants = Merchant.objects.filter(pk__in=chosen.merchant_ids).order_by("slug")
        fl_round.participants.set(chosen.merchant_ids)
        audit.record(
            kind="round.opened",
            fl_round=fl_round,
            data={
                "participants": chosen.invited,
                "eligible": chosen.eligible,
                "invited": list(participants.values_list("slug", flat=True)),
                "selection": chosen.policy,
                "base_version": base_version.number if base_version else None,
            },
        )
        shortfall = chosen.shortfall(fl_round.min_updates)
        needed = aggregation.min_updates(fl_round.strategy, fl_round.strategy_params)
        if fl_round.min_updates < needed:
            _fail(
                fl_round,
                f"{aggregation.LABELS[fl_round.strategy]} now needs at least "
                f"{needed} updates; this round's quorum is {fl_round.min_updates}.",
            )
        elif shortfall:
            _fail(fl_round, shortfall)
        else:
            _announce(fl_round, "round.opened")
            if fl_round.secagg:
                secagg.begin(fl_round)
    return True


def round_close(*, fl_round: Round, actor: AbstractBaseUser | None = None) -> Round:
    """Close an open round early (operator). Needs the quorum; aggregation follows."""
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=fl_round.pk)
        if locked.status != Round.Status.OPEN:
            raise Conflict(f"The round is {locked.status}, not open.", code="round_not_open")
        if locked.secagg:
            raise Conflict(
                "A secure-aggregation round closes when its unmasking phase completes; it "
                "cannot be closed early (cancel it instead).",
                code="secagg_round_closes_itself",
            )
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
    counts["secagg_phases"] = secagg.tick(now=now)
    for round_id in Round.objects.filter(
        status=Round.Status.OPEN, deadline_at__lte=now, secagg_phase=""
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
    """Aggregate a closed round into a new version in this process. Idempotent: a round that
    is no longer aggregating (done by another worker, or gone) is left alone. Returns the
    version number produced, or None."""
    fl_round = _aggregating(round_id)
    if fl_round is None:
        return None
    if fl_round.secagg:
        try:
            outcome, metrics, survivors = secagg.aggregate(fl_round)
        except (AggregationError, codec.CodecError, OSError) as exc:
            _fail_aggregation(round_id, exc)
            return None
        return _complete(fl_round, [], outcome, metrics=metrics, contributors=survivors)
    updates = _accepted_updates(fl_round)
    try:
        with _opened(fl_round, updates) as (arrays, current, state):
            if fl_round.privacy:
                outcome = _dp_outcome(fl_round, arrays, current, updates)
            else:
                outcome = aggregation.aggregate(
                    fl_round.strategy,
                    fl_round.strategy_params,
                    updates=arrays,
                    weights=[u.num_examples for u in updates],
                    current=current,
                    state=state,
                )
    except (AggregationError, codec.CodecError, OSError) as exc:
        _fail_aggregation(round_id, exc)
        return None
    return _complete(fl_round, updates, outcome)


def round_aggregation_plan(*, round_id: int, min_params: int, slices: int) -> dict[str, Any] | None:
    """How to aggregate in parallel slices, or None to do it in one task (small models,
    strategies that need every coordinate at once, rounds no longer aggregating).

    The plan is plain JSON (spans of flat indices, clipping scales): arrays never travel
    through the broker; every slice task reads the stored files itself."""
    fl_round = _aggregating(round_id)
    if (
        fl_round is None
        or slices < 2
        or fl_round.strategy not in aggregation.PARALLEL
        or fl_round.privacy
        or fl_round.secagg
    ):
        return None
    specs = fl_model_specs(fl_round.fl_model)
    if sum(spec.size for spec in specs) < min_params:
        return None
    updates = _accepted_updates(fl_round)
    scales: list[float] | None = None
    info: dict[str, Any] = {}
    clip_norm = fl_round.strategy_params.get("clip_norm")
    if clip_norm is not None:
        try:
            with _opened(fl_round, updates) as (arrays, current, _):
                norms = aggregation.update_norms(arrays, reference=current)
        except (AggregationError, codec.CodecError, OSError) as exc:
            _fail_aggregation(round_id, exc)
            return None
        scales = aggregation.clip_scales(norms, clip_norm)
        info = aggregation.clip_report(norms, clip_norm)
    return {"spans": aggregation.partition_spans(specs, slices), "scales": scales, "info": info}


def round_aggregate_slice(
    *, round_id: int, spans: dict[str, list[int]], scales: list[float] | None
) -> str | None:
    """One parallel slice: the coordinate-wise result over ``spans``, stored as a part file."""
    fl_round = _aggregating(round_id)
    if fl_round is None:
        return None
    updates = _accepted_updates(fl_round)
    spans_t = {name: (int(a), int(b)) for name, (a, b) in spans.items()}
    try:
        with _opened(fl_round, updates) as (arrays, current, _):
            if scales is not None:
                arrays = aggregation.scale_deltas(arrays, reference=current, scales=scales)
            part = aggregation.aggregate_span(
                fl_round.strategy,
                fl_round.strategy_params,
                updates=arrays,
                weights=[u.num_examples for u in updates],
                spans=spans_t,
            )
    except (AggregationError, codec.CodecError, OSError) as exc:
        _fail_aggregation(round_id, exc)
        return None
    with artifacts.written(part) as blob:
        return artifacts.store(blob, f"aggregation/{round_id}/part-{blob.sha256[:16]}.safetensors")


def round_aggregate_finish(
    *, round_id: int, plan: dict[str, Any], parts: list[str | None]
) -> int | None:
    """Stitch the slices, apply the server optimiser, publish the version."""
    try:
        fl_round = _aggregating(round_id)
        if fl_round is None or any(name is None for name in parts):
            return None
        updates = _accepted_updates(fl_round)
        specs = fl_model_specs(fl_round.fl_model)
        pieces = []
        with contextlib.ExitStack() as stack:
            for spans, name in zip(plan["spans"], parts, strict=True):
                path = stack.enter_context(artifacts.local_path(name))
                pieces.append(
                    ({k: (int(a), int(b)) for k, (a, b) in spans.items()}, codec.open_arrays(path))
                )
            whole = aggregation.assemble(specs, pieces)
        with _opened(fl_round, []) as (_, current, state):
            outcome = aggregation.finish(
                fl_round.strategy,
                fl_round.strategy_params,
                coordinatewise=whole,
                current=current,
                state=state,
                info=dict(plan.get("info") or {}),
            )
        return _complete(fl_round, updates, outcome)
    except (AggregationError, codec.CodecError, OSError) as exc:
        _fail_aggregation(round_id, exc)
        return None
    finally:
        for name in parts:
            if name:
                artifacts.delete(name)


def round_aggregation_failed(*, round_id: int, reason: str) -> None:
    """A slice task died unexpectedly: fail the round rather than leave it aggregating."""
    _fail_aggregation(round_id, RuntimeError(reason))


def round_snapshot(fl_round: Round) -> dict[str, Any]:
    """What the live page and the operator API show of a round, as plain JSON."""
    latest = (
        fl_round.updates.select_related("merchant")
        .order_by("-created_at", "-id")
        .values("merchant__slug", "num_examples", "status", "created_at", "metrics")
    )
    updates = list(latest[:SNAPSHOT_UPDATES])[::-1]  # sent on every upload: keep it bounded
    version = getattr(fl_round, "result_version", None) if fl_round.status == "completed" else None
    secure = secagg.progress(fl_round)  # masked inputs count as submissions
    return {
        "id": fl_round.pk,
        "model": fl_round.fl_model.slug,
        "model_name": fl_round.fl_model.name,
        "number": fl_round.number,
        "status": fl_round.status,
        "strategy": fl_round.strategy or fl_round.fl_model.strategy,
        "strategy_params": fl_round.strategy_params
        if fl_round.strategy
        else fl_round.fl_model.strategy_params,
        "aggregation": version.aggregation if version else {},
        "privacy": fl_round.privacy,
        "secagg": secure,
        "min_updates": fl_round.min_updates,
        "target_updates": fl_round.target_updates,
        "participants": fl_round.participants.count(),
        "selection": fl_round.selection,
        "series": str(fl_round.series) if fl_round.series else None,
        "submitted": secure["masked"] if secure else _accepted(fl_round),
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


def _dp_outcome(
    fl_round: Round, arrays: list, current: dict, updates: list[Update]
) -> aggregation.Outcome:
    """DP-FedAvg with noise from a generator seeded by the OS's cryptographic source."""
    weights, info = privacy.dp_aggregate(
        snapshot=fl_round.privacy,
        updates=arrays,
        current=current,
        metrics=[u.metrics for u in updates],
        rng=np.random.default_rng(secrets.randbits(128)),
    )
    return aggregation.Outcome(weights, {}, info)


def _aggregating(round_id: int) -> Round | None:
    fl_round = Round.objects.select_related("fl_model", "base_version").filter(pk=round_id).first()
    if fl_round is None or fl_round.status != Round.Status.AGGREGATING:
        logger.info("round %s is not aggregating; nothing to do", round_id)
        return None
    return fl_round


def _accepted_updates(fl_round: Round) -> list[Update]:
    return list(
        fl_round.updates.filter(status=Update.Status.ACCEPTED)
        .select_related("merchant")
        .order_by("merchant_id")
    )


@contextlib.contextmanager
def _opened(fl_round: Round, updates: list[Update]) -> Iterator[tuple[list, dict, dict]]:
    """Memory-map every update, the base version and its optimiser state (zero-copy)."""
    with contextlib.ExitStack() as stack:

        def mapped(name: str) -> dict[str, Any]:
            return codec.open_arrays(stack.enter_context(artifacts.local_path(name)))

        arrays = [mapped(u.weights.name) for u in updates]
        base = fl_round.base_version
        current = mapped(base.weights.name) if base else {}
        state = mapped(base.state.name) if base and base.state else {}
        yield arrays, current, state


def _complete(
    fl_round: Round,
    updates: list[Update],
    outcome: aggregation.Outcome,
    *,
    metrics: dict[str, float] | None = None,
    contributors: int | None = None,
) -> int | None:
    """Publish the outcome as the next version and complete the round (once, whoever wins).
    A secure-aggregation round has no individual updates: it passes its metrics and count."""
    round_id = fl_round.pk
    metrics = _weighted_metrics(updates) if metrics is None else metrics
    info = dict(outcome.info)
    if "kept" in info:
        info["kept"] = [updates[i].merchant.slug for i in info["kept"]]
    stored: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            blob = stack.enter_context(artifacts.written(outcome.weights))
            state_name = ""
            if outcome.state:
                state_blob = stack.enter_context(artifacts.written(outcome.state))
                state_name = artifacts.store(
                    state_blob,
                    f"states/{fl_round.fl_model.slug}/{state_blob.sha256[:16]}.safetensors",
                )
                stored.append(state_name)
            with transaction.atomic():
                locked = Round.objects.select_for_update().get(pk=round_id)
                if locked.status != Round.Status.AGGREGATING:
                    artifacts.delete(state_name)
                    return None  # another worker finished first
                version = version_create(
                    fl_model=fl_round.fl_model, blob=blob, produced_by=locked, metrics=metrics
                )
                stored.append(version.weights.name)
                ModelVersion.objects.filter(pk=version.pk).update(
                    strategy=locked.strategy,
                    strategy_params=locked.strategy_params,
                    state=state_name,
                    aggregation=info,
                )
                _transition(
                    locked,
                    Round.Status.AGGREGATING,
                    Round.Status.COMPLETED,
                    finished_at=timezone.now(),
                )
                audit.record(
                    kind="round.completed",
                    fl_round=locked,
                    data={
                        "version": version.number,
                        "participants": len(updates) if contributors is None else contributors,
                        "strategy": locked.strategy,
                        "aggregation": info,
                        "metrics": metrics,
                    },
                )
                _announce(locked, "round.completed")
                _open_next_on_commit(locked.fl_model_id)
    except Exception:
        for name in stored:  # the transaction rolled back: no file may outlive it
            artifacts.delete(name)
        raise
    return version.number


def _fail_aggregation(round_id: int, exc: Exception) -> None:
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=round_id)
        if locked.status == Round.Status.AGGREGATING:
            _fail(locked, f"Aggregation failed: {getattr(exc, 'detail', exc)}")


def _weighted_metrics(updates: list[Update]) -> dict[str, float]:
    """Example-weighted mean of each metric that every update reported."""
    if not updates:
        return {}
    keys = set.intersection(*(set(u.metrics) for u in updates)) - PRIVATE_METRICS
    total = sum(u.num_examples for u in updates)
    metrics = {
        key: sum(float(u.metrics[key]) * u.num_examples for u in updates) / total
        for key in sorted(keys)
    }
    metrics["num_examples"] = float(total)
    return metrics
