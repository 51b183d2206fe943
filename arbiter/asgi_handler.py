"""Django's ASGI handler with one thread hop into the request's thread instead of one per middleware hook.

Under ASGI Django builds the middleware chain for async: each `MiddlewareMixin` middleware (sessions,
CSRF, auth, messages, common, clickjacking) then runs its `process_request` and `process_response`
through `sync_to_async`, and the sync view through one more: 16 hand-offs between the event loop and
the request's thread for one annotator page. Each costs CPU on both sides and needs the GIL twice;
with several requests in flight in one process they queue behind each other's GIL holds. Measured
in-process through this app (8 annotators at once, the same machine and minute): 9.6-10.1 ms of server
CPU per judgment with Django's handler, 6.7-7.0 ms with this one (/work/notes/annot.md).

`ArbiterASGIHandler` builds the chain as a WSGI server would (every middleware that can run
synchronously does, and the view is called directly), so everything below the async-only static-file
middleware runs in one call on the request's thread. What is above it stays on the event loop, as
before: ServeStatic (async-only, serves files without a thread), the NUL-query check, and Django's
SecurityMiddleware (its two hooks still hop: `check --deploy` looks for it by name). Same middleware,
same order, the same request thread for the view, the `request_started` signal and `response.close()`
(so database connections are taken from and returned to the pool as before): 5 hops a page, not 16.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import AsyncToSync, sync_to_async
from django.core.handlers.asgi import ASGIHandler


class ArbiterASGIHandler(ASGIHandler):
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
