"""Django's ASGI handler with one thread hop into the request's thread instead of one per middleware hook.

Under ASGI Django builds the middleware chain for async: each `MiddlewareMixin` middleware (sessions,
CSRF, auth, messages, common, clickjacking) then runs its `process_request` and `process_response`
through `sync_to_async`, and the sync view through one more: 16 hand-offs between the event loop and
the request's thread for one annotator page. Each costs CPU on both sides and needs the GIL twice;
with several requests in flight in one process they queue behind each other's GIL holds. Measured
in-process through this app (8 annotators at once, the same machine and minute): 9.6-10.1 ms of server
CPU per judgment with Django's handler, 6.7-7.0 ms with this one (an in-process A/B, 2026-12-02).

`ArbiterASGIHandler` builds the chain as a WSGI server would (every middleware that can run
synchronously does, and the view is called directly), so everything below the async-only static-file
middleware runs in one call on the request's thread. What is above it stays on the event loop, as
before: ServeStatic (async-only, serves files without a thread), the NUL-query check, and Django's
SecurityMiddleware (its two hooks still hop: `check --deploy` looks for it by name). Same middleware,
same order, the same request thread for the view, the `request_started` signal and `response.close()`
(so database connections are taken from and returned to the pool as before): 5 hops a page, not 16.

The request's thread is also reused. Django enters a `ThreadSensitiveContext` per request, which
started a new thread for it and, on exit, one more to join that thread: two thread starts per page,
each blocking the event loop until the new thread ran (with the GIL busy, milliseconds; py-spy: ~14%
of the workers' samples in `Thread.start` under 32 annotators). Here each request borrows a
one-thread executor from an idle list and gives it back (asgiref's `ThreadSensitiveContext(executor=)`,
made for this); a WSGI server reuses its threads the same way, and Django closes or returns the
thread's database connections at the end of each request as before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import AsyncToSync, ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler

# Idle request threads a process keeps for the next requests; more run at once when needed.
IDLE_REQUEST_THREADS = 64


class RequestThread(ThreadPoolExecutor):
    """One thread that runs one request's synchronous work at a time, and says when it has finished."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self._last: Future[Any] | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._last = super().submit(fn, *args, **kwargs)
        return self._last

    def idle(self) -> bool:
        return self._last is None or self._last.done()  # one worker, first in first out: the last is the latest


class ArbiterASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[RequestThread] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Only this event loop's thread touches the idle list: no lock needed.
        executor = self._idle.pop() if self._idle else RequestThread()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if executor.idle() and len(self._idle) < IDLE_REQUEST_THREADS:
                self._idle.append(executor)
            else:
                # Still running a view whose client went away (Django stopped waiting for it), or enough
                # idle threads kept: let it finish its work and exit.
                executor.shutdown(wait=False)

    def load_middleware(self, is_async: bool = False) -> None:
        # Build for a synchronous caller: every middleware that can run sync does, views are called directly.
        super().load_middleware(is_async=False)
        top: Any = self._middleware_chain  # type: ignore[has-type]  # set by Django's load_middleware
        if isinstance(top, AsyncToSync):
            # The top of the chain is async (ServeStatic and what is above it); Django wrapped it for a
            # sync caller. This handler's caller is async: use it as it is.
            self._middleware_chain = top.awaitable
        else:
            # No async middleware at all: the whole chain is one call on the request's thread.
            self._middleware_chain = sync_to_async(top, thread_sensitive=True)
