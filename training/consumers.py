"""Websocket consumer of a run's live page: authorise on connect and while streaming; forward its events, coalesced."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arbiter.live_access import AccessCheckedConsumer
from training import events, selectors


class RunConsumer(AccessCheckedConsumer):
    """Joins group `run.<id>`. Events land in a Coalescer and one pump task sends them: while the
    browser is slow to take a message, newer events merge into the next one (bounded), so the
    server never queues an unbounded backlog for a slow client. Before each send the pump asks
    `still_allowed()` (a cached decision, re-made every few seconds or when access changes): a
    socket whose run was unshared or whose user logged out is closed instead."""

    async def connect(self) -> None:
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        self.group = events.run_group(self.run_id)
        self.pending = events.Coalescer()
        self.wake = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None
        if await self.admit(groups=[self.group]):
            self.pump = asyncio.create_task(self._pump())

    def allowed(self, user: Any) -> bool:
        return selectors.can_view_run(user=user, run_id=self.run_id)

    async def disconnect(self, code: int) -> None:
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump
        await super().disconnect(code)

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
            if not await self.still_allowed():
                return  # closed: what is pending is never sent
            delta = self.pending.take()
            if delta is not None:
                await self.send_json(delta)
