"""Websocket consumer of a run's live page: authorise on connect, forward the run's events, coalesced."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from training import events, selectors


class RunConsumer(AsyncJsonWebsocketConsumer):
    """Joins group `run.<id>`. Events land in a Coalescer and one pump task sends them: while the
    browser is slow to take a message, newer events merge into the next one (bounded), so the
    server never queues an unbounded backlog for a slow client."""

    async def connect(self) -> None:
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        self.group = events.run_group(self.run_id)
        self.pending = events.Coalescer()
        self.wake = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None
        user = self.scope.get("user")
        allowed = (
            user is not None
            and user.is_authenticated
            and await database_sync_to_async(selectors.can_view_run)(user=user, run_id=self.run_id)
        )
        if not allowed:
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.pump = asyncio.create_task(self._pump())

    async def disconnect(self, code: int) -> None:
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message: Any) -> None:
        # channels runs close_old_connections() before every handler, through the process's one
        # sync thread: for a run event (no database work) that is a thread hop per socket per
        # event, queued behind every other socket's. With 50 sockets it was most of the live p99.
        if message.get("type") == "run.event":
            await self.run_event(message)
            return
        await super().dispatch(message)

    async def run_event(self, message: events.RunEventMessage) -> None:
        self.pending.add(message["payload"])
        self.wake.set()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("kind") == "ping":  # keep-alive from the page
            await self.send_json({"kind": "pong"})

    async def _pump(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            delta = self.pending.take()
            if delta is not None:
                await self.send_json(delta)
