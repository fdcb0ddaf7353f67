"""WebSocket consumers: authenticate, join a group, send a snapshot, relay events."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from flportal.roles import can_view
from rounds import broadcast, services
from rounds.models import Round


class RoundProgressConsumer(AsyncJsonWebsocketConsumer):
    """Live progress of one round, for operators. Reconnecting clients get a fresh snapshot."""

    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(can_view)(user):
            await self.close(code=4403)
            return
        round_id = int(self.scope["url_route"]["kwargs"]["round_id"])
        snapshot = await self._snapshot(round_id)
        if snapshot is None:
            await self.close(code=4404)
            return
        self.group = broadcast.round_group(round_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"event": "snapshot", "round": snapshot})

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Read-only feed: anything a browser sends is ignored."""

    async def round_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"event": message["event"], "round": message["round"]})

    @database_sync_to_async
    def _snapshot(self, round_id: int) -> dict[str, Any] | None:
        fl_round = (
            Round.objects.select_related("fl_model", "base_version").filter(pk=round_id).first()
        )
        return services.round_snapshot(fl_round) if fl_round else None
