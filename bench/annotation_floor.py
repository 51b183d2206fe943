"""The annotator loop's floor: what this machine serves with no web framework at all (bench_annotation.py --floor).

A bare ASGI app under the same uvicorn command line (uvloop, httptools, the same worker count) doing the work a
submit must do on the database and the cache, and nothing else: the session's and the user's reads from Redis (one
round trip each, as Django's cached_db sessions and CachedModelBackend make them), then Arbiter's own four SQL
statements, imported from the code the platform runs (the requester's assignment, the submit, the annotator's
state, the claim of the next item), on async psycopg with a pool, and an answer padded to the byte size of
Arbiter's real page (FLOOR_PAGE_BYTES). There is no CSRF check, no session-hash check, no form validation, no
template, no middleware: it is not a server to run, only the number a Django path cannot beat on this machine, so
that the bench shows how far the platform's own per-request cost is from the machine's limit.

Run by bench_annotation.py as `uvicorn annotation_floor:app` with FLOOR_DATABASE_URL, REDIS_URL and
FLOOR_PAGE_BYTES in the environment.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle  # Django's Redis cache pickles what it stores; this reads the bench's own sessions
import secrets
import urllib.parse
from typing import Any

import django

django.setup()  # only to import the SQL below from the platform's modules; nothing of Django runs per request

import redis.asyncio as aredis  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402

from arbiter.accounts.backends import user_cache_key  # noqa: E402
from evaluation.selectors import _ASSIGNMENT_COLUMNS, _OWN_SQL, _STATE_SQL  # noqa: E402
from evaluation.services.queue import _CLAIM_SQL, _SUBMIT_SQL  # noqa: E402

STATE_SQL = _STATE_SQL.format(assignment=_ASSIGNMENT_COLUMNS)
SESSION_PREFIX = ":1:django.contrib.sessions.cached_db"  # Django's cache key: version 1, cached_db's prefix
PAGE_BYTES = int(os.environ.get("FLOOR_PAGE_BYTES", "8000"))
LEASE = dt.timedelta(seconds=600)
_state: dict[str, Any] = {}


async def _startup() -> None:
    size = int(os.environ.get("DATABASE_POOL_MAX_SIZE", "16"))  # as Arbiter's pool per process (settings.py)
    pool = AsyncConnectionPool(
        os.environ["FLOOR_DATABASE_URL"], min_size=size, max_size=size, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    _state["pool"], _state["redis"] = pool, aredis.from_url(os.environ["REDIS_URL"])


def _session_key(scope: dict[str, Any]) -> str:
    for name, value in scope["headers"]:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == "sessionid":
                    return val
    return ""


def _page(rendered: Any, assignment_id: int | None) -> bytes:
    if assignment_id is None:
        body = b"<p>done</p>"
    else:
        item = "".join(str(v) for v in (rendered or {}).values()).encode()
        form = (
            b'<form method="post"><input name="csrfmiddlewaretoken" value="%s"><input name="assignment" value="%d">'
            % (
                secrets.token_urlsafe(48).encode(),
                assignment_id,
            )
        )
        body = item + form + b"</form>"
    head = b"<!doctype html><html><head><title>floor</title></head><body>"
    pad = max(0, PAGE_BYTES - len(head) - len(body) - len(b"<!---->") - len(b"</body></html>"))
    return head + b"<!--" + b"x" * pad + b"-->" + body + b"</body></html>"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _startup()
                await send({"type": "lifespan.startup.complete"})
            else:
                await _state["pool"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    cache = _state["redis"]
    session = pickle.loads(await cache.get(SESSION_PREFIX + _session_key(scope)))  # noqa: S301
    user = int(session["_auth_user_id"])
    await cache.get(f":1:{user_cache_key(user)}")
    study = int(scope["path"].split("/")[2])
    now = dt.datetime.now(dt.UTC)
    async with _state["pool"].connection() as conn:
        if scope["method"] == "POST":
            form = urllib.parse.parse_qs(body.decode())
            assignment = int(form["assignment"][0])
            own = {"assignment": assignment, "study": study, "user": user, "any": False}
            row = await (await conn.execute(_OWN_SQL, own)).fetchone()
            verdict = {"choice": form["choice"][0], "swapped": bool(row and row[7])}
            submit = {
                "now": now,
                "assignment": assignment,
                "annotator": user,
                "payload": Jsonb(verdict),
                "time_ms": 900,
            }
            await conn.execute(_SUBMIT_SQL, submit)
        state = await (await conn.execute(STATE_SQL, {"user": user, "study": study, "any": False})).fetchone()
        after = state[22] if state is not None and state[14] is not None else -1
        claimed = None
        for start in (after, -1):
            claim = {"study": study, "annotator": user, "now": now, "expires": now + LEASE, "kind": "pairwise"}
            claimed = await (await conn.execute(_CLAIM_SQL, {**claim, "after": start})).fetchone()
            if claimed is not None:
                break
    page = _page(claimed[4], claimed[0]) if claimed is not None else _page(None, None)
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(page)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": page})
