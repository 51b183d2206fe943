"""What an API answers when the database cannot serve a request right now: 503 with Retry-After, never 500.

On SQLite (the embedded platform) every transaction takes the one write lock at BEGIN and waits up to
the connection's busy timeout for it (arbiter/env.py); a writer still waiting after that gets
"database is locked". On PostgreSQL, a restart or a lost connection surfaces the same way, as an
OperationalError. Either is the server being busy or away for a moment, which is what 503 says; a
client that retries (arbiter_client does) loses nothing, because every write of the API is idempotent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec

from django.db import OperationalError
from django.http import HttpResponse, JsonResponse

logger = logging.getLogger(__name__)
RETRY_AFTER_S = 2
P = ParamSpec("P")


def busy_response(exc: OperationalError) -> JsonResponse:
    logger.warning("database busy or unavailable, answered 503: %s", exc)
    response = JsonResponse(
        {"error": "the database is busy or unavailable; retry shortly (nothing of this request was written)"},
        status=503,
    )
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


def busy_is_503(view: Callable[P, HttpResponse]) -> Callable[P, HttpResponse]:
    """Decorate a synchronous API view: an OperationalError becomes busy_response()."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> HttpResponse:
        try:
            return view(*args, **kwargs)
        except OperationalError as exc:
            return busy_response(exc)

    return wrapped
