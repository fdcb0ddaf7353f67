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
    """Announce a round's new state to its live page and the overview, once committed."""
    message = {"type": "round.event", "event": event, "round": snapshot}
    groups = (round_group(snapshot["id"]), OVERVIEW_GROUP)
    transaction.on_commit(lambda: _send(groups, message))


def _send(groups: tuple[str, ...], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # the live feed must never break the request that changed state
        logger.warning("could not broadcast %s", message.get("event"), exc_info=True)
