"""A health-check websocket: proves the socket, session auth and channel layer work end to end."""

from __future__ import annotations

from typing import Any

from arbiter.live_access import AccessCheckedConsumer


class PingConsumer(AccessCheckedConsumer):
    """Echo through the channel layer: `{"ping": x}` comes back as `{"pong": x, "user": name}` via a group send."""

    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=4401)
            return
        self.group = f"ping.{user.pk}"
        await self.admit(groups=[self.group])

    def allowed(self, user: Any) -> bool:
        return True  # any logged-in user, for as long as the session stays valid

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if await self.still_allowed():
            await self.channel_layer.group_send(self.group, {"type": "ping.reply", "value": content.get("ping")})

    async def ping_reply(self, message: dict[str, Any]) -> None:
        if await self.still_allowed():
            await self.send_json({"pong": message["value"], "user": self.scope["user"].get_username()})
