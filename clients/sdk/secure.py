"""Taking part in a secure-aggregation round: the four phases, driven over the REST API.

The merchant advertises its mask key at once, trains while the others advertise, shares its
secrets, uploads its masked change and finally reveals the shares the server needs. Its change
leaves the shop only masked (4 bytes per parameter); the server learns only the sum.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from clients.sdk import secagg as sa
from clients.sdk.client import ApiError, FlportalClient, RoundInfo
from clients.sdk.training import Trainer

logger = logging.getLogger("flportal.client.secagg")

PHASES = ("advertise", "share", "mask", "unmask")


class Dropped(Exception):
    """The round moved past a phase this merchant had not finished (or ended)."""


def participate_secure(
    client: FlportalClient,
    trainer: Trainer,
    fl_round: RoundInfo,
    *,
    identity: bytes,
    poll_interval: float = 0.2,
    stop: threading.Event | None = None,
    after_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every phase for one round; returns the last state the server sent."""
    stop = stop or threading.Event()
    state = client.secagg_state(fl_round.id)
    session = sa.MemberSession(identity, context=state["context"], index=int(state["index"]))

    def wait_for(phase: str) -> dict[str, Any]:
        while not stop.is_set():
            current = client.secagg_state(fl_round.id)
            if current["status"] != "open" or not current["phase"]:
                raise Dropped(f"the round is {current['status']}")
            position = PHASES.index(current["phase"])
            if position == PHASES.index(phase):
                return current
            if position > PHASES.index(phase):
                raise Dropped(f"the round moved on to {current['phase']}")
            time.sleep(poll_interval)
        raise Dropped("stopped")

    def done(phase: str) -> None:
        if after_phase is not None:
            after_phase(phase)

    wait_for("advertise")
    client.secagg_advertise(fl_round.id, session.s_public)
    done("advertise")

    base = client.download_weights(fl_round)
    hints = {**fl_round.training_hints, "round": fl_round.number}
    result = trainer(base, hints)

    state = wait_for("share")
    client.secagg_share(
        fl_round.id, session.share_bundles(state["neighbours"], int(state["threshold"]))
    )
    done("share")

    state = wait_for("mask")
    session.open_shares(state["neighbours"], state["shares"])
    names = [spec.name for spec in fl_round.tensors] or sorted(base)
    delta = sa.flatten_delta(result.weights, base, names)
    if state.get("l2_clip_norm"):
        delta, _ = sa.l2_clip(delta, float(state["l2_clip_norm"]))
    quantizer = sa.Quantizer(
        clip_range=float(state["clip_range"]),
        max_weight=int(state["max_weight"]),
        participants=int(state["members"]),
    )
    weight = max(1, min(int(result.num_examples), quantizer.max_weight))
    masked = session.masked_input(state["neighbours"], delta, weight=weight, quantizer=quantizer)
    # only the trainer's own scalar metrics travel in the clear; nothing derived from the change
    client.secagg_masked(fl_round.id, masked, metrics=dict(result.metrics))
    done("mask")

    state = wait_for("unmask")
    client.secagg_reveal(fl_round.id, session.reveal(state["neighbours"], int(state["threshold"])))
    done("unmask")
    return client.secagg_state(fl_round.id)


def skip_reason(exc: Exception) -> str | None:
    """Why a secure round was skipped, or None if the error should propagate."""
    if isinstance(exc, Dropped):
        return str(exc)
    if isinstance(exc, ApiError) and exc.code in {
        "secagg_not_a_member",
        "secagg_wrong_phase",
        "secagg_phase_over",
        "round_not_open",
        "round_not_found",
    }:
        return exc.code
    return None
