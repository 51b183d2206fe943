"""Django's ASGI handler with one thread hop a request instead of one per middleware hook and signal.

Under ASGI Django builds the middleware chain for async: each `MiddlewareMixin` middleware (sessions,
CSRF, auth, messages, common, clickjacking) then runs its `process_request` and `process_response`
through `sync_to_async`, and the sync view through one more: 16 hand-offs between the event loop and
the request's thread for one annotator page. Each costs CPU on both sides and needs the GIL twice;
with several requests in flight in one process they queue behind each other's GIL holds. Measured
in-process through this app (8 annotators at once, the same machine and minute): 9.6-10.1 ms of server
CPU per judgment with Django's handler, 6.7-7.0 ms with this one (an in-process A/B, 2026-12-02).

`ArbiterASGIHandler` builds the chain as a WSGI server would (every middleware that can run
synchronously does, and the view is called directly), and runs a page's whole request in one call on
the request's thread: the `request_started` signal, every middleware hook (SecurityMiddleware and the
NUL-query check included), the view and, for a response in memory, `response.close()`
(`request_finished`: database connections back to the pool) before its bytes are sent. The event loop
only reads the body before and sends the answer after: 1 hop a page (16 with Django's handler; 5 when
SecurityMiddleware and the signals still ran on the loop, which cost ~11% more CPU per judgment at 32
annotators, bench/bench_annotation.py, 2026-12-02). Static files (under STATIC_URL) keep the async
chain: ServeStatic, async-only, serves them on the event loop without a thread. A streamed response
(downloads: async iterators, arbiter.streaming) is sent as Django sends it, stopped when the client
goes away, then closed on the thread.

The request's thread is also reused. Django enters a `ThreadSensitiveContext` per request, which
started a new thread for it and, on exit, one more to join that thread: two thread starts per page,
each blocking the event loop until the new thread ran (with the GIL busy, milliseconds; py-spy: ~14%
of the workers' samples in `Thread.start` under 32 annotators). Here each request borrows a
one-thread executor from an idle list and gives it back (asgiref's `ThreadSensitiveContext(executor=)`,
made for this); a WSGI server reuses its threads the same way, and Django closes or returns the
thread's database connections at the end of each request as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from asgiref.sync import AsyncToSync, ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpResponseBase
from django.urls import set_script_prefix

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


STATIC_MIDDLEWARE = "servestatic.middleware.ServeStaticMiddleware"


class _SyncChain(BaseHandler):
    """The middleware chain without ServeStatic, built for a synchronous caller as a WSGI server builds it.

    Django's `load_middleware` reads `settings.MIDDLEWARE`; it is swapped for the list without the async-only
    static-file middleware for that one call, at start-up, before any request runs."""

    def __init__(self, middleware: list[str]) -> None:
        super().__init__()
        saved = settings.MIDDLEWARE
        settings.MIDDLEWARE = middleware
        try:
            self.load_middleware(is_async=False)
        finally:
            settings.MIDDLEWARE = saved


class ArbiterASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[RequestThread] = []
        # Pages (everything but static files): the whole request in one call on its thread.
        self._sync = _SyncChain([m for m in settings.MIDDLEWARE if m != STATIC_MIDDLEWARE])
        self._static_prefix: str | None = None
        self._all_async = False
        if STATIC_MIDDLEWARE in settings.MIDDLEWARE:
            from servestatic.middleware import ServeStaticMiddleware

            # The prefix ServeStatic itself matches request.path_info against; files it serves from
            # SERVESTATIC_ROOT sit at any path, so with that set every request takes its chain.
            prefix = getattr(settings, "SERVESTATIC_STATIC_PREFIX", None)
            prefix = prefix or ServeStaticMiddleware.default_static_prefix(settings)
            self._static_prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
            self._all_async = getattr(settings, "SERVESTATIC_ROOT", None) is not None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Only this event loop's thread touches the idle list: no lock needed.
        executor = self._idle.pop() if self._idle else RequestThread()
        try:
            async with ThreadSensitiveContext(executor=executor):
                if self._static(scope):
                    await self.handle(scope, receive, send)  # ServeStatic answers on the event loop, no thread
                else:
                    await self.handle_in_thread(scope, receive, send)
        finally:
            if executor.idle() and len(self._idle) < IDLE_REQUEST_THREADS:
                self._idle.append(executor)
            else:
                # Still running a view whose client went away (Django stopped waiting for it), or enough
                # idle threads kept: let it finish its work and exit.
                executor.shutdown(wait=False)

    def _static(self, scope: Any) -> bool:
        """Whether ServeStatic may answer: its prefix against the request's path_info, which (as Django's
        ASGIRequest computes it) is the path without the script prefix (FORCE_SCRIPT_NAME or root_path)."""
        if self._static_prefix is None:
            return False
        if self._all_async:
            return True
        path: str = scope["path"]
        script = get_script_prefix(scope).rstrip("/")
        if script:
            path = path.removeprefix(script)
        return path.startswith(self._static_prefix)

    async def handle_in_thread(self, scope: Any, receive: Any, send: Any) -> None:
        """Django's `handle` with everything between reading the body and sending the answer in one hop.

        `request_started`, the request object, every middleware hook, the view and, for a response in memory,
        `response.close()` (`request_finished`: database connections back to the pool) run in one call on the
        request's thread, as under a WSGI server; the event loop reads the body before and sends the bytes
        after. A streamed response is sent as Django sends it (its iterator pulled by the loop, a client that
        goes away stops it), then closed on the thread. What this gives up from Django's handler: it notices a
        client that disconnects while a synchronous view is still running only after the view returns (Django
        could not stop that view either; it only stopped waiting for it)."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await sync_to_async(self._respond, thread_sensitive=True)(scope, body_file)
        except asyncio.CancelledError:
            raise  # the view may still be running on its thread with the body: the request closes it there
        except BaseException:
            body_file.close()
            raise
        if not response.streaming:
            body_file.close()  # request.close() in response.close() has closed it already; a no-op then
            await self.send_response(response, send)
            return
        # A streamed answer may still read the request: its body stays open until the response is closed.
        sending = asyncio.create_task(self.send_response(response, send))
        listening = asyncio.create_task(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait([sending, listening], return_when=asyncio.FIRST_COMPLETED)
        finally:
            try:
                # Also when this task itself is cancelled: no task outlives the request's thread context.
                for task in (listening, sending):
                    if not task.done():
                        task.cancel()
                    with suppress(asyncio.CancelledError, RequestAborted):
                        await task  # a stream that failed part-way raises here, after its connection was cut
            finally:
                await sync_to_async(response.close, thread_sensitive=True)()
                body_file.close()

    def _respond(self, scope: Any, body_file: Any) -> HttpResponseBase:
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, refused = self.create_request(scope, body_file)
        if request is None:
            assert refused is not None  # create_request gives a request or the answer refusing it
            response: HttpResponseBase = refused
        else:
            response = self._sync.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]  # as ASGIHandler sets it
        if not response.streaming:
            response.close()  # its content is in memory; request_finished now, on the thread that did the work
        return response

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
