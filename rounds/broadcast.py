"""The one place sync code talks to the channel layer. Messages leave only after commit."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

OVERVIEW_GROUP = "rounds"


def round_group(round_id: int) -> str:
    return f"round-{int(round_id)}"


def round_changed(snapshot: dict[str, Any], *, event: str) -> None:
    """Announce a round's new state to its live page and the overview, once committed. The
    overview (round list, dashboard) gets the snapshot without its list of updates."""
    message = {"type": "round.event", "event": event, "round": snapshot}
    summary = {**message, "round": overview_snapshot(snapshot)}
    sends = ((round_group(snapshot["id"]), message), (OVERVIEW_GROUP, summary))
    transaction.on_commit(lambda: _send(sends))


def overview_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A round snapshot as pages listing many rounds need it: everything but the updates."""
    return {key: value for key, value in snapshot.items() if key != "updates"}


def _send(sends: tuple[tuple[str, dict[str, Any]], ...]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message: dict[str, Any] = {}
    try:
        for group, message in sends:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # the live feed must never break the request that changed state
        logger.warning("could not broadcast %s", message.get("event"), exc_info=True)
