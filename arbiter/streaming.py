"""Streamed downloads under ASGI: chunk by chunk, never the whole body in the web process's memory.

Django's ASGI handler can send a streaming response only through an async iterator; given a sync one (a file,
a generator that zips a checkpoint) it first reads it whole into a list (`StreamingHttpResponse.__aiter__`,
with a warning), so a 5 GB checkpoint would be held in memory before its first byte left. `in_thread` turns
a sync iterator into an async one that pulls each chunk in a worker thread, so the event loop never blocks on
a disk or bucket read and only one chunk is in memory at a time. Under WSGI (the test client) Django reads an
async iterator the other way round, so the same responses serve both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.http import FileResponse

CHUNK = 1 << 20
_DONE = object()


async def in_thread(iterable: Iterable[bytes]) -> AsyncIterator[bytes]:
    """Yield `iterable`'s chunks, each read in a thread (not thread-sensitive: no database work inside)."""
    iterator = iter(iterable)

    def take() -> Any:
        return next(iterator, _DONE)

    pull = sync_to_async(take, thread_sensitive=False)
    try:
        while (chunk := await pull()) is not _DONE:
            yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()


def _file_chunks(file: Any) -> Iterable[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk


def file_download(path: Path, *, filename: str) -> FileResponse:
    """A FileResponse (its headers: type, length, attachment name) whose body is streamed by `in_thread`."""
    file = path.open("rb")
    response = FileResponse(file, as_attachment=True, filename=filename)
    response.streaming_content = in_thread(_file_chunks(file))  # the file is still closed by the response
    return response
