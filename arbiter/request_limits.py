"""Request body limits in front of Django: an over-limit body is refused before it is read, spooled or authenticated.

Why an ASGI middleware and not a Django setting: Django's ASGI handler reads the whole body into a
temporary file (on disk past FILE_UPLOAD_MAX_MEMORY_SIZE) before any middleware or view runs, so a
limit checked in a view comes after a stranger's gigabyte has been written. Here:

1. a declared `Content-Length` over the route's limit gets 413 at once, nothing read;
2. a streamed body (chunked, no length) is counted as it arrives and cut off the moment it passes
   the limit: Django is told the client went away, and the client gets 413;
3. a body larger than what Django keeps in memory (FILE_UPLOAD_MAX_MEMORY_SIZE) is accepted only
   from a client that shows a credential first (a session, a user API key, or the run token of the
   run it writes to), checked before the first byte is passed on: a stranger's body never reaches disk.

The limits are settings (REQUEST_BODY_LIMITS, REQUEST_BODY_MAX_BYTES); production puts the same
limits in the reverse proxy (nginx `client_max_body_size`, see the README) so most of an oversized
upload never reaches the web process at all.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from http.cookies import SimpleCookie
from typing import Any, ParamSpec, TypeVar

import orjson
from asgiref.sync import sync_to_async
from django.db import close_old_connections

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # Django's handler types its arguments more narrowly

_RUN_PATH = re.compile(r"^/api/runs/(?P<run_id>\d+)/")
P = ParamSpec("P")
R = TypeVar("R")


def _in_pool_thread(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run a database check in a pool thread, applying CONN_MAX_AGE around it: pool threads outlive
    requests, so Django's request-end cleanup never sees their connection (as in training/api.py)."""

    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(wrapped, thread_sensitive=False)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


class BodyLimitMiddleware:
    """Wraps the HTTP side of the ASGI application; websockets and lifespan pass through untouched."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: Sequence[tuple[str, int]],
        default: int,
        anonymous: int,
        credential_check: Callable[[Scope], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.limits = [(re.compile(pattern), limit) for pattern, limit in limits]
        self.default = default
        self.anonymous = anonymous  # largest body accepted before a credential is checked
        self.credential_check = credential_check or has_credential

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.limits:
            if pattern.match(path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared == -1:
            await _refuse(scope, send, 400, "Content-Length is not a number.")
            return
        if declared is not None and declared > limit:
            await _refuse(scope, send, 413, f"Request body larger than {_mib(limit)}, the limit of this route.")
            return
        checked = declared is not None and declared <= self.anonymous
        if declared is not None and not checked:
            if not await self.credential_check(scope):
                await _refuse(scope, send, 401, _anonymous_message(self.anonymous))
                return
            checked = True

        received = 0
        refusal: tuple[int, str] | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refusal, checked
            if refusal is not None:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received > limit:
                refusal = (413, f"Request body larger than {_mib(limit)}, the limit of this route.")
            elif received > self.anonymous and not checked:
                # A streamed body with no declared length has just outgrown what needs no credential.
                if await self.credential_check(scope):
                    checked = True
                else:
                    refusal = (401, _anonymous_message(self.anonymous))
            if refusal is not None:
                # Django's handler drops a request whose client went away, before any view runs.
                return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if refusal is not None and not started:
            await _refuse(scope, send, *refusal)


def _anonymous_message(anonymous: int) -> str:
    return f"Log in or send a valid token to upload more than {_mib(anonymous)}."


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent (chunked), -1 when unreadable."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """A small answer, JSON under /api/ (the API's error shape), text elsewhere; the connection closes."""
    if scope["path"].startswith("/api/"):
        body = orjson.dumps({"error": message, "field": "body"})
        content_type = b"application/json"
    else:
        body = message.encode()
        content_type = b"text/plain; charset=utf-8"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is not wanted: the client should stop sending rather than keep the connection.
        (b"connection", b"close"),
    ]
    if status == 401 and scope["path"].startswith("/api/"):
        headers.append((b"www-authenticate", b'Bearer realm="arbiter"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def has_credential(scope: Scope) -> bool:
    """Whether the request carries a credential that would let it in: checked before its body is read.

    Only whether *some* identity is proven: what that identity may do is still the view's decision.
    """
    authorization = _header(scope, b"authorization")
    if authorization.startswith("Bearer "):
        token = authorization[7:].strip()
        match = _RUN_PATH.match(scope["path"])
        if token.startswith("arb_r_") and match:
            return await _run_token_may_write(run_id=int(match["run_id"]), token=token)
        if token.startswith("arb_u_"):
            return await _api_key_is_valid(token)
        return False
    cookies = SimpleCookie()
    try:
        cookies.load(_header(scope, b"cookie"))
    except Exception:  # a malformed cookie header proves nothing
        return False
    from django.conf import settings

    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    return morsel is not None and await _session_is_authenticated(morsel.value)


@_in_pool_thread
def _run_token_may_write(*, run_id: int, token: str) -> bool:
    from training.models import ACTIVE_STATUSES, Run, hash_token

    return Run.objects.filter(id=run_id, token_hash=hash_token(token), status__in=ACTIVE_STATUSES).exists()


@_in_pool_thread
def _api_key_is_valid(token: str) -> bool:
    from training.models import ApiToken, hash_token

    return ApiToken.objects.filter(token_hash=hash_token(token), revoked_at__isnull=True, user__is_active=True).exists()


@_in_pool_thread
def _session_is_authenticated(session_key: str) -> bool:
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import SESSION_KEY

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return SESSION_KEY in store.load()
