"""WebSocket consumers: authenticate, join a group, send a snapshot, relay events.

Both feeds are read-only and for portal users (operators and viewers) only. Each sends the
whole current state on connect, so a reconnecting page needs no catch-up logic.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from flportal.roles import can_view
from rounds import broadcast
from rounds.models import Round
from rounds.services import live
from rounds.services.lifecycle import round_snapshot

OVERVIEW_SHOWN = 50  # active and scheduled rounds sent to the overview on connect


class _PortalFeed(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def _allowed(self) -> bool:
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(can_view)(user):
            await self.close(code=4403)
            return False
        return True

    async def _join(self, group: str) -> None:
        self.group = group
        await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Read-only feed: anything a browser sends is ignored."""


class RoundProgressConsumer(_PortalFeed):
    """Live progress of one round. Sends ``{"event": "snapshot", ...round_live}`` on connect,
    then for every event the new snapshot plus what changed since the last message: new event
    log entries, the rows of the merchants concerned (all rows when the status changed), counts
    and, once completed, the new version."""

    round_id: int = 0
    last_event_id: int = 0
    last_status: str | None = None

    async def connect(self) -> None:
        if not await self._allowed():
            return
        self.round_id = int(self.scope["url_route"]["kwargs"]["round_id"])
        state = await self._state()
        if state is None:
            await self.close(code=4404)
            return
        await self._join(broadcast.round_group(self.round_id))
        self._remember(state)
        await self.send_json({"event": "snapshot", **state})

    async def round_event(self, message: dict[str, Any]) -> None:
        changes = await self._changes()
        if changes is None:  # the round is gone
            return
        self._remember({"round": message["round"], **changes})
        await self.send_json({"event": message["event"], "round": message["round"], **changes})

    def _remember(self, state: dict[str, Any]) -> None:
        self.last_event_id = max(self.last_event_id, state["last_event_id"])
        self.last_status = state["status"] if "status" in state else state["round"]["status"]

    @database_sync_to_async
    def _state(self) -> dict[str, Any] | None:
        fl_round = self._round()
        return live.round_live(fl_round) if fl_round else None

    @database_sync_to_async
    def _changes(self) -> dict[str, Any] | None:
        fl_round = self._round()
        if fl_round is None:
            return None
        changes = live.round_live_changes(
            fl_round, after_id=self.last_event_id, status_before=self.last_status
        )
        changes["status"] = fl_round.status
        return changes

    def _round(self) -> Round | None:
        return (
            Round.objects.select_related("fl_model", "base_version")
            .filter(pk=self.round_id)
            .first()
        )


class RoundsOverviewConsumer(_PortalFeed):
    """Every round's state changes, for the round list and the dashboard. On connect:
    ``{"event": "snapshot", "rounds": [...]}`` with the active and scheduled rounds; then
    ``{"event": kind, "round": snapshot-without-updates}`` per change."""

    async def connect(self) -> None:
        if not await self._allowed():
            return
        rounds = await self._active()
        await self._join(broadcast.OVERVIEW_GROUP)
        await self.send_json({"event": "snapshot", "rounds": rounds})

    async def round_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"event": message["event"], "round": message["round"]})

    @database_sync_to_async
    def _active(self) -> list[dict[str, Any]]:
        rounds = (
            Round.objects.filter(
                status__in=[Round.Status.SCHEDULED, Round.Status.OPEN, Round.Status.AGGREGATING]
            )
            .select_related("fl_model", "base_version")
            .order_by("opens_at", "pk")[:OVERVIEW_SHOWN]
        )
        return [broadcast.overview_snapshot(round_snapshot(fl_round)) for fl_round in rounds]
