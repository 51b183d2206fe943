"""Live study progress: researchers who may view a study join `study.<id>` and get its events while they still may."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from arbiter.live_access import AccessCheckedConsumer
from evaluation import events, selectors


class StudyConsumer(AccessCheckedConsumer):
    """Authorises on connect (owner, shared researcher, admin) and again before forwarding each progress message."""

    async def connect(self) -> None:
        self.study_id = int(self.scope["url_route"]["kwargs"]["study_id"])
        if not await self.admit(groups=[events.study_group(self.study_id)]):
            return
        # State first, deltas after: the page needs no separate backlog request.
        snapshot = await database_sync_to_async(selectors.study_progress)(study_id=self.study_id)
        await self.send_json(snapshot)

    def allowed(self, user: Any) -> bool:
        return selectors.can_view_study(user=user, study_id=self.study_id)

    async def study_event(self, message: dict[str, Any]) -> None:
        if await self.still_allowed():
            await self.send_json(message["payload"])
