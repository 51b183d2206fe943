"""Live study progress: researchers who may view the study join `study.<id>` and receive its events."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from evaluation import events, selectors


class StudyConsumer(AsyncJsonWebsocketConsumer):  # Channels ships no types (subclassing Any is allowed)
    """Authorises on connect (owner, shared researcher, admin), then forwards progress messages."""

    async def connect(self) -> None:
        self.study_id = int(self.scope["url_route"]["kwargs"]["study_id"])
        user = self.scope["user"]
        allowed = await database_sync_to_async(selectors.can_view_study)(user=user, study_id=self.study_id)
        if not allowed:
            await self.close(code=4403)
            return
        self.group = events.study_group(self.study_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # State first, deltas after: the page needs no separate backlog request.
        snapshot = await database_sync_to_async(selectors.study_progress)(study_id=self.study_id)
        await self.send_json(snapshot)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def study_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["payload"])
