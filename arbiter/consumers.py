"""A health-check websocket: proves the socket, session auth and channel layer work end to end."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class PingConsumer(AsyncJsonWebsocketConsumer):
    """Echo through the channel layer: `{"ping": x}` comes back as `{"pong": x, "user": name}` via a group send."""

    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=4401)
            return
        self.group = f"ping.{user.pk}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send(self.group, {"type": "ping.reply", "value": content.get("ping")})

    async def ping_reply(self, message: dict[str, Any]) -> None:
        await self.send_json({"pong": message["value"], "user": self.scope["user"].get_username()})
