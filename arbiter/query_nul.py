"""A NUL character in a query string is refused with a 400 naming the parameter, before any view runs.

PostgreSQL text cannot hold U+0000 and the filesystem calls refuse it ("embedded null byte"), so a `?tag=%00`
or `?dataset=%00` reaching a filter or a path check was a 500 on every page that reads a parameter. One check
here covers every route, present and future. Async-capable, as every middleware in the stack is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import sync_and_async_middleware


def _refusal(request: HttpRequest) -> HttpResponse | None:
    for name, values in request.GET.lists():
        if "\x00" in name or any("\x00" in v for v in values):
            field = name.replace("\x00", "\\0")[:100]
            message = f"query parameter {field!r} must not contain NUL characters"
            if request.path.startswith("/api/"):
                return JsonResponse({"error": message, "field": field}, status=400)
            return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
    return None


@sync_and_async_middleware
def refuse_nul_in_query(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    if asyncio.iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            refused = _refusal(request)
            if refused is not None:
                return refused
            response: Awaitable[HttpResponse] = get_response(request)
            return await response

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        refused = _refusal(request)
        if refused is not None:
            return refused
        result: HttpResponse = get_response(request)
        return result

    return middleware
