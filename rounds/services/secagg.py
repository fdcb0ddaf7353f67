"""Secure aggregation in the round lifecycle (the cryptography is ``clients.sdk.secagg``).

An open round of a model with secure aggregation moves through four phases, each with its own
deadline, before it aggregates:

    advertise  every member posts this round's mask public key
    share      every member posts its sealed Shamir share bundles, one per holder
    mask       every member uploads its masked, quantized change (4 bytes per parameter)
    unmask     every survivor reveals, per neighbour, the share the server needs

A phase ends early when every member still in the protocol has answered, or at its deadline
with whoever answered; fewer than the threshold t (or the quorum) fails the round with the
reason. All transitions happen with the round row locked, so two last messages cannot both
advance a phase. The server stores only public keys, sealed shares, masked vectors and, after
unmasking, the shares it needs: never an individual update in the clear.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from clients.models import Merchant
from clients.sdk import codec
from clients.sdk import secagg as sa
from flportal.errors import Conflict, NotFound, ValidationFailed
from rounds import aggregation, artifacts, audit
from rounds.models import Round, SecAggParticipant, SecAggShare

ADVERTISE, SHARE, MASK, UNMASK = "advertise", "share", "mask", "unmask"
PHASES = (ADVERTISE, SHARE, MASK, UNMASK)
# The member field each phase's message sets.
DONE_FIELD = {
    ADVERTISE: "advertised_at",
    SHARE: "shared_at",
    MASK: "masked_at",
    UNMASK: "revealed_at",
}
LINEAR_STRATEGIES = frozenset({"fedavg", "fedprox"})
MASKED_TENSOR = "masked"
DEFAULTS: dict[str, Any] = {
    "neighbours": None,  # None: every member is every other's neighbour (plain SecAgg)
    "threshold": None,  # None: more than half of each member's share holders
    "clip_range": 1.0,  # each coordinate of a change is clipped to [-c, c] before quantizing
    "max_weight": 100_000,  # a member's weight is min(num_examples, max_weight)
    "phase_seconds": 60,
}


# -- settings ---------------------------------------------------------------------------------


def parse_secagg(
    raw: Any, *, strategy: str, strategy_params: dict[str, Any], privacy: dict[str, Any]
) -> dict[str, Any]:
    """Validated settings ({} = off). Secure aggregation needs a linear strategy (the server
    only ever sees the sum), and with DP, clipping on the clients."""
    if not raw:
        return {}
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationFailed("secure_aggregation must be an object.", code="invalid_secagg")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValidationFailed(
            f"Unknown secure_aggregation settings {unknown}.", code="invalid_secagg"
        )
    settings = {**DEFAULTS, **raw}
    neighbours, threshold = settings["neighbours"], settings["threshold"]
    if neighbours is not None and (
        not _is_int(neighbours) or neighbours < 2 or neighbours % 2 or neighbours > 1000
    ):
        raise ValidationFailed(
            "neighbours must be an even integer in [2, 1000], or null for all.",
            code="invalid_secagg",
        )
    if threshold is not None and (not _is_int(threshold) or not 2 <= threshold <= 1001):
        raise ValidationFailed("threshold must be an integer in [2, 1001].", code="invalid_secagg")
    if neighbours is not None and threshold is not None and threshold > neighbours + 1:
        raise ValidationFailed(
            "threshold cannot exceed neighbours + 1 (the holders of each member's shares).",
            code="invalid_secagg",
        )
    clip_range = settings["clip_range"]
    if (
        isinstance(clip_range, bool)
        or not isinstance(clip_range, int | float)
        or not (math.isfinite(clip_range) and 0 < clip_range <= 1e6)
    ):
        raise ValidationFailed("clip_range must be a number in (0, 1e6].", code="invalid_secagg")
    if not _is_int(settings["max_weight"]) or not 1 <= settings["max_weight"] <= 10**6:
        raise ValidationFailed("max_weight must be an integer in [1, 1e6].", code="invalid_secagg")
    if not _is_int(settings["phase_seconds"]) or not 5 <= settings["phase_seconds"] <= 86_400:
        raise ValidationFailed("phase_seconds must be within [5, 86400].", code="invalid_secagg")
    if strategy not in LINEAR_STRATEGIES or strategy_params.get("clip_norm") is not None:
        raise ValidationFailed(
            "Secure aggregation reveals only the sum: it runs with FedAvg or FedProx and no "
            "server-side clipping.",
            code="secagg_needs_linear_strategy",
        )
    if privacy:
        if privacy.get("clip_mode", "server") != "client":
            raise ValidationFailed(
                "With secure aggregation the server never sees single updates: set the DP "
                "clip_mode to 'client'.",
                code="secagg_needs_client_clipping",
            )
        if privacy.get("clipping", "fixed") != "fixed":
            raise ValidationFailed(
                "Adaptive clipping needs the unclipped count of each update, which secure "
                "aggregation hides; use fixed clipping.",
                code="secagg_needs_fixed_clipping",
            )
    settings["clip_range"] = float(clip_range)
    return settings


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def round_settings(fl_round: Round, members: int) -> dict[str, Any]:
    """The effective settings for ``members`` members: neighbours, threshold, quantizer."""
    settings = dict(fl_round.secagg)
    k = settings["neighbours"]
    k = members - 1 if k is None or k >= members - 1 else k
    t = settings["threshold"] or sa.default_threshold(k)
    dp = fl_round.privacy
    settings["l2_clip_norm"] = None
    if dp:  # DP-FedAvg: equal weights, each change L2-clipped to C so every coordinate is <= C
        settings["max_weight"] = 1
        settings["clip_range"] = settings["l2_clip_norm"] = float(dp["clip_norm"])
    return {**settings, "neighbours": k, "threshold": min(t, k + 1)}


def quantizer(fl_round: Round) -> sa.Quantizer:
    info = fl_round.secagg
    return sa.Quantizer(
        clip_range=info["clip_range"], max_weight=info["max_weight"], participants=info["members"]
    )


# -- opening ----------------------------------------------------------------------------------


def begin(fl_round: Round) -> None:
    """Called by round_open inside its transaction: enrol the invited merchants that have a
    registered key, number them at random and start the advertise phase."""
    from rounds.services.lifecycle import _announce, _fail

    invited = list(fl_round.participants.order_by("pk"))
    keyed, unkeyed = [], []
    for merchant in invited:
        key = _registered_key(merchant)
        (keyed if key else unkeyed).append((merchant, key))
    if unkeyed:
        fl_round.participants.remove(*[m for m, _ in unkeyed])
        audit.record(
            kind="secagg.excluded",
            fl_round=fl_round,
            data={
                "merchants": [m.slug for m, _ in unkeyed],
                "reason": "no registered X25519 key",
            },
        )
    order = list(range(1, len(keyed) + 1))
    secrets.SystemRandom().shuffle(order)
    SecAggParticipant.objects.bulk_create(
        SecAggParticipant(fl_round=fl_round, merchant=m, index=i, c_public_key=key)
        for (m, key), i in zip(keyed, order, strict=True)
    )
    settings = round_settings(fl_round, max(len(keyed), 2))
    now = timezone.now()
    context = f"{fl_round.pk}:{secrets.token_hex(16)}"
    Round.objects.filter(pk=fl_round.pk).update(
        secagg={**settings, "members": len(keyed), "context": context},
        secagg_phase=ADVERTISE,
        phase_deadline_at=now + timedelta(seconds=settings["phase_seconds"]),
    )
    fl_round.refresh_from_db()
    needed = max(settings["threshold"], fl_round.min_updates)
    if len(keyed) < needed:
        _fail(
            fl_round,
            f"Secure aggregation needs {needed} members with a registered key; "
            f"{len(keyed)} of {len(invited)} invited merchants have one.",
        )
        return
    audit.record(
        kind="secagg.phase",
        fl_round=fl_round,
        data={"phase": ADVERTISE, "members": len(keyed), "threshold": settings["threshold"]},
    )
    _announce(fl_round, "secagg.phase")


def _registered_key(merchant: Merchant) -> bytes | None:
    try:
        return sa.check_public_key(base64.b64decode(merchant.public_key, validate=True))
    except (binascii.Error, ValueError):
        return None


# -- what a member sees -----------------------------------------------------------------------


def member_for(*, fl_round: Round, merchant: Merchant) -> SecAggParticipant:
    if not fl_round.secagg:
        raise Conflict("This round does not use secure aggregation.", code="secagg_not_enabled")
    member = SecAggParticipant.objects.filter(fl_round=fl_round, merchant=merchant).first()
    if member is None:
        raise NotFound(
            "This merchant is not a member of the round's secure aggregation (register an "
            "X25519 key before the round opens).",
            code="secagg_not_a_member",
        )
    return member


def state_for(*, fl_round: Round, merchant: Merchant) -> dict[str, Any]:
    """The protocol state one member needs for the current phase."""
    member = member_for(fl_round=fl_round, merchant=merchant)
    info = fl_round.secagg
    phase = fl_round.secagg_phase if fl_round.status == Round.Status.OPEN else ""
    state: dict[str, Any] = {
        "round": fl_round.pk,
        "status": fl_round.status,
        "phase": phase,
        "phase_deadline_at": fl_round.phase_deadline_at if phase else None,
        "context": info["context"],
        "index": member.index,
        "members": info["members"],
        "threshold": info["threshold"],
        "clip_range": info["clip_range"],
        "max_weight": info["max_weight"],
        "l2_clip_norm": info.get("l2_clip_norm"),
        "done": {
            ADVERTISE: member.advertised_at is not None,
            SHARE: member.shared_at is not None,
            MASK: member.masked_at is not None,
            UNMASK: member.revealed_at is not None,
        },
        "neighbours": [],
        "shares": [],
    }
    if phase in (SHARE, MASK, UNMASK):
        stage = {SHARE: "advertised_at", MASK: "shared_at", UNMASK: "shared_at"}[phase]
        peers = SecAggParticipant.objects.filter(
            fl_round=fl_round, index__in=member.neighbours, **{f"{stage}__isnull": False}
        ).order_by("index")
        state["neighbours"] = [
            {
                "index": p.index,
                "c_public_key": _b64(p.c_public_key),
                "s_public_key": _b64(p.s_public_key),
                "survived": p.masked_at is not None,
            }
            for p in peers
        ]
    if phase in (MASK, UNMASK):
        shares = SecAggShare.objects.filter(fl_round=fl_round, recipient=member.index)
        senders = {n["index"] for n in state["neighbours"]} | {member.index}
        state["shares"] = [
            {"sender": s.sender, "sealed": _b64(s.sealed)}
            for s in shares.order_by("sender")
            if s.sender in senders
        ]
    return state


# -- the four messages ------------------------------------------------------------------------


def advertise(*, fl_round: Round, merchant: Merchant, s_public_key: bytes) -> bool:
    """Post this round's mask public key. True when stored now, False for an identical retry."""
    try:
        sa.check_public_key(s_public_key)
    except sa.SecAggError as exc:
        raise ValidationFailed(str(exc), code=exc.code) from None
    with _phase_lock(fl_round, merchant, ADVERTISE) as (locked, member):
        if member.advertised_at is not None:
            return _retry(bytes(member.s_public_key) == s_public_key, ADVERTISE)
        SecAggParticipant.objects.filter(pk=member.pk).update(
            s_public_key=s_public_key, advertised_at=timezone.now()
        )
        _progress(locked, member, ADVERTISE)
    return True


def share(*, fl_round: Round, merchant: Merchant, sealed: dict[int, bytes]) -> bool:
    """Post one sealed share bundle for each holder: every neighbour and the member itself."""
    with _phase_lock(fl_round, merchant, SHARE) as (locked, member):
        expected = {*member.neighbours, member.index}
        if member.shared_at is not None:
            stored = {
                s.recipient: bytes(s.sealed)
                for s in SecAggShare.objects.filter(fl_round=locked, sender=member.index)
            }
            return _retry(stored == sealed, SHARE)
        if set(sealed) != expected:
            raise ValidationFailed(
                f"Send exactly one sealed bundle to each of {sorted(expected)}.",
                code="secagg_wrong_recipients",
            )
        limit = sa.SHARE_PLAINTEXT_BYTES + 12 + 16
        if any(len(blob) != limit for blob in sealed.values()):
            raise ValidationFailed(
                f"Every sealed bundle is {limit} bytes.", code="secagg_invalid_share"
            )
        SecAggShare.objects.bulk_create(
            SecAggShare(fl_round=locked, sender=member.index, recipient=r, sealed=blob)
            for r, blob in sorted(sealed.items())
        )
        SecAggParticipant.objects.filter(pk=member.pk).update(shared_at=timezone.now())
        _progress(locked, member, SHARE)
    return True


def mask(
    *, fl_round: Round, merchant: Merchant, blob: artifacts.Blob, metrics: dict[str, float]
) -> bool:
    """Store the member's masked vector: one uint32 tensor of (parameters + 1) words."""
    from rounds.services.fl_models import fl_model_specs

    size = sum(spec.size for spec in fl_model_specs(fl_round.fl_model)) + 1
    expected = [codec.TensorSpec(MASKED_TENSOR, (size,), "uint32")]
    member = member_for(fl_round=fl_round, merchant=merchant)
    if member.masked_at is not None:
        return _retry(member.masked_sha256 == blob.sha256, MASK)
    _check_phase(fl_round, MASK)
    try:
        artifacts.validate(blob, expected)
    except codec.CodecError as exc:
        raise ValidationFailed(
            f"A masked input is one uint32 tensor '{MASKED_TENSOR}' of shape [{size}]: "
            f"{exc.detail}",
            code=exc.code,
        ) from None
    name = artifacts.store(blob, f"masked/{fl_round.pk}/{member.index}-{blob.sha256[:16]}.bin")
    try:
        with _phase_lock(fl_round, merchant, MASK) as (locked, member):
            if member.masked_at is not None:
                artifacts.delete(name)
                return _retry(member.masked_sha256 == blob.sha256, MASK)
            SecAggParticipant.objects.filter(pk=member.pk).update(
                masked=name, masked_sha256=blob.sha256, masked_at=timezone.now(), metrics=metrics
            )
            _progress(locked, member, MASK)
    except Exception:
        artifacts.delete(name)
        raise
    return True


def reveal(*, fl_round: Round, merchant: Merchant, shares: dict[int, bytes]) -> bool:
    """Reveal, for each neighbour that shared with this member, its share of b (the neighbour
    uploaded a masked input) or of s (it dropped). Never both for the same neighbour."""
    with _phase_lock(fl_round, merchant, UNMASK) as (locked, member):
        holders = SecAggShare.objects.filter(fl_round=locked, recipient=member.index)
        status = dict(
            SecAggParticipant.objects.filter(
                fl_round=locked, index__in=[h.sender for h in holders], shared_at__isnull=False
            ).values_list("index", "masked_at")
        )
        if member.revealed_at is not None:
            stored = {h.sender: bytes(h.revealed) for h in holders if h.revealed is not None}
            return _retry(stored == shares, UNMASK)
        if set(shares) != set(status):
            raise ValidationFailed(
                f"Reveal exactly one share for each of {sorted(status)}.",
                code="secagg_wrong_senders",
            )
        if any(len(value) != sa.FIELD_BYTES for value in shares.values()):
            raise ValidationFailed(
                f"Every revealed share is {sa.FIELD_BYTES} bytes.", code="secagg_invalid_share"
            )
        for holder in holders:
            if holder.sender in shares:
                kind = "b" if status[holder.sender] is not None else "s"
                SecAggShare.objects.filter(pk=holder.pk).update(
                    revealed=shares[holder.sender], revealed_kind=kind
                )
        SecAggParticipant.objects.filter(pk=member.pk).update(revealed_at=timezone.now())
        _progress(locked, member, UNMASK)
    return True


def _retry(same: bool, phase: str) -> bool:
    if same:
        return False
    raise Conflict(
        f"This member already sent a different {phase} message for this round.",
        code="secagg_already_submitted",
    )


@contextlib.contextmanager
def _phase_lock(
    fl_round: Round, merchant: Merchant, phase: str
) -> Iterator[tuple[Round, SecAggParticipant]]:
    """Lock the round, check it is open in ``phase``, and give the member row. A member's
    retry of a message it already sent is answered whatever the phase is now."""
    with transaction.atomic():
        locked = Round.objects.select_related("fl_model").select_for_update().get(pk=fl_round.pk)
        member = member_for(fl_round=locked, merchant=merchant)
        if not _already_done(member, phase):
            _check_phase(locked, phase)
        yield locked, member


def _already_done(member: SecAggParticipant, phase: str) -> bool:
    return getattr(member, DONE_FIELD[phase]) is not None


def _check_phase(fl_round: Round, phase: str) -> None:
    if fl_round.status != Round.Status.OPEN:
        raise Conflict(f"The round is {fl_round.status}, not open.", code="round_not_open")
    if fl_round.secagg_phase != phase:
        raise Conflict(
            f"The round is in the {fl_round.secagg_phase} phase; this is a {phase} message.",
            code="secagg_wrong_phase",
        )
    if fl_round.phase_deadline_at and fl_round.phase_deadline_at <= timezone.now():
        raise Conflict(f"The {phase} phase is over.", code="secagg_phase_over")


def _progress(fl_round: Round, member: SecAggParticipant, phase: str) -> None:
    from rounds.services.lifecycle import _announce

    audit.record(
        kind=f"secagg.{phase}",
        merchant=member.merchant,
        fl_round=fl_round,
        data={"index": member.index},
    )
    if not _advance(fl_round, timezone.now(), deadline_passed=False):
        _announce(fl_round, f"secagg.{phase}")


# -- phase transitions ------------------------------------------------------------------------


def tick(*, now: datetime | None = None) -> int:
    """Beat: end the phases whose deadline passed. Returns how many rounds moved."""
    now = now or timezone.now()
    moved = 0
    due = Round.objects.filter(status=Round.Status.OPEN, phase_deadline_at__lte=now).exclude(
        secagg_phase=""
    )
    for round_id in due.values_list("pk", flat=True):
        with transaction.atomic():
            locked = Round.objects.select_for_update().get(pk=round_id)
            if locked.status == Round.Status.OPEN and locked.secagg_phase:
                moved += int(_advance(locked, now, deadline_passed=True))
    return moved


def _advance(fl_round: Round, now: datetime, *, deadline_passed: bool) -> bool:
    """With the round locked: end the current phase if everyone answered or its deadline
    passed. True when the phase changed (or the round failed or closed)."""
    from rounds.services.lifecycle import _announce, _begin_aggregation, _fail

    phase = fl_round.secagg_phase
    members = SecAggParticipant.objects.filter(fl_round=fl_round)
    info = fl_round.secagg
    t = info["threshold"]
    needed = max(t, fl_round.min_updates)
    previous = PHASES.index(phase) - 1  # members still in: those who finished the last phase
    expected = (
        members.filter(**{f"{DONE_FIELD[PHASES[previous]]}__isnull": False})
        if previous >= 0
        else members
    )
    answered = expected.filter(**{f"{DONE_FIELD[phase]}__isnull": False})
    total, count = expected.count(), answered.count()
    if count < total and not deadline_passed:
        return False
    if phase == UNMASK:
        missing = _missing_shares(fl_round)
        if missing and count < total:
            return False  # wait for the others: their shares may still complete it
        if missing:
            _fail(fl_round, f"Unmasking failed: {missing}")
            return True
        survivors = members.filter(masked_at__isnull=False).count()
        Round.objects.filter(pk=fl_round.pk).update(secagg_phase="", phase_deadline_at=None)
        fl_round.refresh_from_db()
        _begin_aggregation(fl_round, reason=f"secure aggregation unmasked {survivors} inputs")
        return True
    if count < needed:
        _fail(
            fl_round,
            f"Secure aggregation: only {count} of {total} members completed the {phase} phase; "
            f"it needs {needed} (threshold {t}, quorum {fl_round.min_updates}).",
        )
        return True
    nxt = PHASES[PHASES.index(phase) + 1]
    if phase == ADVERTISE:
        _build_graph(fl_round, list(answered.values_list("index", flat=True)))
    if phase == SHARE:
        short = _short_of_holders(fl_round, t)
        if short:
            _fail(fl_round, short)
            return True
    seconds = info["phase_seconds"]
    deadline = now + timedelta(seconds=seconds)
    if nxt == MASK and fl_round.deadline_at and fl_round.deadline_at > deadline:
        deadline = fl_round.deadline_at  # training happens here: the round's own deadline
    Round.objects.filter(pk=fl_round.pk).update(secagg_phase=nxt, phase_deadline_at=deadline)
    fl_round.refresh_from_db()
    dropped = total - count
    audit.record(
        kind="secagg.phase",
        fl_round=fl_round,
        data={"phase": nxt, "members": count, "dropped": dropped},
    )
    _announce(fl_round, "secagg.phase")
    return True


def _build_graph(fl_round: Round, indices: list[int]) -> None:
    """SecAgg+ neighbours among the members that advertised a key."""
    info = fl_round.secagg
    k = min(info["neighbours"], len(indices) - 1)
    seed = info["context"].encode()
    graph = sa.neighbour_graph(indices, neighbours=k, seed=seed) if len(indices) > 1 else {}
    for member in SecAggParticipant.objects.filter(fl_round=fl_round, index__in=indices):
        SecAggParticipant.objects.filter(pk=member.pk).update(
            neighbours=graph.get(member.index, [])
        )


def _short_of_holders(fl_round: Round, t: int) -> str:
    """Every member that shared needs t holders that also shared, or nobody could unmask."""
    shared = dict(
        SecAggParticipant.objects.filter(fl_round=fl_round, shared_at__isnull=False).values_list(
            "index", "neighbours"
        )
    )
    for index, neighbours in shared.items():
        holders = 1 + sum(1 for v in neighbours if v in shared)
        if holders < t:
            return (
                f"Secure aggregation: member #{index} has {holders} share holders left; the "
                f"threshold is {t}."
            )
    return ""


def _missing_shares(fl_round: Round) -> str:
    """Which secret cannot be rebuilt from the revealed shares (empty when all can)."""
    t = fl_round.secagg["threshold"]
    rows = SecAggParticipant.objects.filter(fl_round=fl_round, shared_at__isnull=False)
    survivors, dropped, neighbours = [], [], {}
    for index, masked_at, near in rows.values_list("index", "masked_at", "neighbours"):
        (survivors if masked_at is not None else dropped).append(index)
        neighbours[index] = near
    revealed = Counter(
        SecAggShare.objects.filter(fl_round=fl_round, revealed__isnull=False).values_list(
            "sender", flat=True
        )
    )
    for index in survivors + dropped:
        if index in dropped and not set(neighbours[index]) & set(survivors):
            continue  # its masks touch nobody's input: nothing to remove
        if revealed[index] < t:
            secret = "self-mask seed" if index in survivors else "mask key"
            return (
                f"only {revealed[index]} shares of member #{index}'s {secret} were "
                f"revealed; the threshold is {t}."
            )
    return ""


# -- aggregation (in the Celery worker) -------------------------------------------------------


def aggregate(fl_round: Round) -> tuple[aggregation.Outcome, dict[str, float], int]:
    """Sum the masked inputs, remove the masks, decode: (outcome, mean metrics, survivors)."""
    info = fl_round.secagg
    context = info["context"].encode()
    members = list(SecAggParticipant.objects.filter(fl_round=fl_round, shared_at__isnull=False))
    survivors = [m for m in members if m.masked_at is not None]
    dropped = [m for m in members if m.masked_at is None]
    by_index = {m.index: m for m in members}
    started = time.perf_counter()
    total: np.ndarray | None = None
    for member in survivors:
        with artifacts.local_path(member.masked.name) as path:
            words = codec.open_arrays(path)[MASKED_TENSOR]
            if total is None:
                total = words.astype("<u4", copy=True)
            else:
                np.add(total, words, out=total)
    if total is None:
        raise aggregation.AggregationError("No masked inputs.", code="too_few_updates")
    summed = time.perf_counter()
    shares = _revealed(fl_round)
    for member in survivors:
        seed = _rebuild(shares, member.index, "b")
        sa.remove_self_mask(total, seed)
    self_masks = time.perf_counter()
    survivor_indices = {m.index for m in survivors}
    for member in dropped:
        partners = [v for v in member.neighbours if v in survivor_indices]
        if not partners:
            continue
        s_private = _rebuild(shares, member.index, "s")
        for v in partners:
            seed = sa.agree(
                s_private,
                bytes(by_index[v].s_public_key),
                info=sa.mask_info(context, member.index, v),
            )
            sa.remove_pair_mask(total, survivor=v, dropped=member.index, seed=seed)
    unmasked = time.perf_counter()
    weighted, weight = quantizer(fl_round).decode(total)
    outcome = _apply(fl_round, weighted, weight, len(survivors))
    outcome.info.update(
        {
            "secure_aggregation": True,
            "members": len(members),
            "survivors": len(survivors),
            "dropped_recovered": len(dropped),
            "sum_seconds": round(summed - started, 4),
            "self_unmask_seconds": round(self_masks - summed, 4),
            "dropped_unmask_seconds": round(unmasked - self_masks, 4),
        }
    )
    metrics = _mean_metrics(survivors)
    return outcome, metrics, len(survivors)


def _revealed(fl_round: Round) -> dict[tuple[int, str], dict[int, bytes]]:
    shares: dict[tuple[int, str], dict[int, bytes]] = {}
    for share_row in SecAggShare.objects.filter(fl_round=fl_round, revealed__isnull=False):
        key = (share_row.sender, share_row.revealed_kind)
        shares.setdefault(key, {})[share_row.recipient] = bytes(share_row.revealed)
    return shares


def _rebuild(shares: dict[tuple[int, str], dict[int, bytes]], index: int, kind: str) -> bytes:
    points = shares.get((index, kind), {})
    try:
        return sa.shamir_combine(points)
    except sa.SecAggError as exc:
        raise aggregation.AggregationError(
            f"Member #{index}'s secret could not be rebuilt: {exc}", code="secagg_unmask_failed"
        ) from None


def _apply(
    fl_round: Round, weighted: np.ndarray, weight: int, survivors: int
) -> aggregation.Outcome:
    """current + (weighted sum [+ DP noise]) / total weight, tensor by tensor."""
    if weight < 1:
        raise aggregation.AggregationError(
            "The unmasked weights sum to zero.", code="secagg_unmask_failed"
        )
    info: dict[str, Any] = {"total_weight": weight}
    dp = fl_round.privacy
    if dp:
        rng = np.random.default_rng(secrets.randbits(128))
        std = dp["noise_multiplier"] * dp["clip_norm"]
        weighted = weighted + rng.normal(0.0, std, size=weighted.shape)
        info.update(
            {
                "noise_std": float(std / weight),
                "clip_norm": dp["clip_norm"],
                "noise_multiplier": dp["noise_multiplier"],
                "epsilon_after": dp["epsilon_after"],
            }
        )
    from rounds.services.fl_models import fl_model_specs

    mean = weighted / weight
    weights: dict[str, np.ndarray] = {}
    offset = 0
    with artifacts.local_path(fl_round.base_version.weights.name) as path:
        current = codec.open_arrays(path)
        for spec in fl_model_specs(fl_round.fl_model):
            chunk = mean[offset : offset + spec.size].reshape(spec.shape)
            offset += spec.size
            base = np.asarray(current[spec.name], dtype=np.float64)
            weights[spec.name] = (base + chunk).astype(spec.dtype)
    return aggregation.Outcome(weights, {}, info)


def _mean_metrics(survivors: list[SecAggParticipant]) -> dict[str, float]:
    """Unweighted mean of the scalar metrics every survivor reported (counts stay masked)."""
    if not survivors:
        return {}
    keys = set.intersection(*(set(m.metrics) for m in survivors))
    metrics = {k: sum(float(m.metrics[k]) for m in survivors) / len(survivors) for k in keys}
    return dict(sorted(metrics.items()))


def progress(fl_round: Round) -> dict[str, Any]:
    """For the operator's live view: phase, deadline, and how many members got how far."""
    if not fl_round.secagg:
        return {}
    counts = SecAggParticipant.objects.filter(fl_round=fl_round).aggregate(
        members=Count("pk"),
        advertised=Count("advertised_at"),
        shared=Count("shared_at"),
        masked=Count("masked_at"),
        revealed=Count("revealed_at"),
    )
    dropped = counts["shared"] - counts["masked"] if fl_round.secagg_phase in ("", UNMASK) else 0
    return {
        "phase": fl_round.secagg_phase,
        "phase_deadline_at": fl_round.phase_deadline_at.isoformat()
        if fl_round.phase_deadline_at
        else None,
        "threshold": fl_round.secagg.get("threshold"),
        "neighbours": fl_round.secagg.get("neighbours"),
        **counts,
        "dropped_after_sharing": max(dropped, 0),
    }


def _b64(raw: Any) -> str | None:
    return base64.b64encode(bytes(raw)).decode() if raw is not None else None


def decode_b64(value: Any, *, field: str) -> bytes:
    if not isinstance(value, str) or len(value) > 4096:
        raise ValidationFailed(f"{field} must be a base64 string.", code="invalid_base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed(f"{field} is not valid base64.", code="invalid_base64") from None
