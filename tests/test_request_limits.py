"""Body limits in front of Django (issue 12 item 5): over-limit bodies are refused before they are read or spooled.

Most tests drive the real ASGI application (arbiter.asgi) with a `receive` that counts the bytes the
server pulls from the "socket": what is never pulled is never stored. One test goes through the real
uvicorn server with a raw socket, which declares a gigabyte and sends none of it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

from arbiter.accounts.models import User
from arbiter.asgi import application
from evaluation import services as study_services
from evaluation.models import Item
from tests.evaluation.conftest import jsonl, pairwise_row
from training.models import Run
from training.selectors import stored_points
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 2**20
GiB = 2**30


class Exchange:
    """One request through the ASGI app: its body pulled chunk by chunk, its answer collected."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)  # produced lazily: a declared gigabyte is never built in memory
        self.next_chunk = next(self.chunks, None)
        self.pulled = 0  # bytes the server took from the client
        self.sent: list[dict[str, Any]] = []
        self._done = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.next_chunk is None:
            await self._done.wait()  # the body is over: only a disconnect could come now
            return {"type": "http.disconnect"}
        chunk, self.next_chunk = self.next_chunk, next(self.chunks, None)
        self.pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": self.next_chunk is not None}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.sent if m["type"] == "http.response.start"))

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def request(
    path: str,
    *,
    chunks: Iterable[bytes] = (),
    headers: dict[str, str] | None = None,
    content_length: int | None = None,
) -> Exchange:
    exchange = Exchange(chunks)
    raw_headers = [(b"host", b"127.0.0.1"), *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
    if content_length is not None:
        raw_headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(application(scope, exchange.receive, exchange.send), timeout=60)
    return exchange


def metric_body(n: int, key: str = "loss") -> bytes:
    return orjson.dumps({"points": [{"key": key, "step": s, "value": 0.5} for s in range(n)]})


def stream(total: int, chunk: int = MiB) -> Iterator[bytes]:
    for i in range(0, total, chunk):
        yield b"x" * min(chunk, total - i)


@pytest.fixture
def run_and_token(researcher: User) -> tuple[Run, str]:
    return runs.create_external_run(owner=researcher, name="limits", config={})


@pytest.mark.asyncio
async def test_a_declared_gigabyte_is_refused_before_a_byte_is_read() -> None:
    answer = await request(
        "/api/runs/1/metrics/", headers={"authorization": "Bearer arb_r_bogus"}, content_length=GiB, chunks=stream(GiB)
    )
    assert answer.status == 413
    assert answer.pulled == 0
    assert orjson.loads(answer.body)["field"] == "body"


@pytest.mark.asyncio
async def test_a_streamed_body_is_cut_off_the_moment_it_passes_the_route_limit(
    run_and_token: tuple[Run, str],
) -> None:
    run, token = run_and_token
    limit = settings.API_MAX_REQUEST_BYTES
    answer = await request(
        f"/api/runs/{run.id}/metrics/", headers={"authorization": f"Bearer {token}"}, chunks=stream(limit + 8 * MiB)
    )
    assert answer.status == 413
    assert limit < answer.pulled <= limit + MiB  # read up to the limit, then not one chunk more
    assert await sync_to_async(stored_points)(run_id=run.id) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_strangers_large_body_never_outgrows_memory(declared: bool) -> None:
    """Past FILE_UPLOAD_MAX_MEMORY_SIZE Django would spool to disk: a bogus token is refused before that."""
    total = 20 * MiB
    answer = await request(
        "/api/runs/1/metrics/",
        headers={"authorization": "Bearer arb_r_bogus"},
        content_length=total if declared else None,
        chunks=stream(total, chunk=256 * 1024),
    )
    assert answer.status == 401
    if declared:
        assert answer.pulled == 0
    else:
        assert answer.pulled <= settings.FILE_UPLOAD_MAX_MEMORY_SIZE + 256 * 1024


@pytest.mark.asyncio
async def test_a_run_token_of_an_ended_run_cannot_send_a_large_body(run_and_token: tuple[Run, str]) -> None:
    run, token = run_and_token
    await sync_to_async(Run.objects.filter(id=run.id).update)(status="succeeded")
    answer = await request(
        f"/api/runs/{run.id}/metrics/", headers={"authorization": f"Bearer {token}"}, content_length=5 * MiB
    )
    assert (answer.status, answer.pulled) == (401, 0)


@pytest.mark.asyncio
async def test_small_and_authenticated_large_batches_are_ingested(run_and_token: tuple[Run, str]) -> None:
    run, token = run_and_token
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    small = metric_body(100)
    answer = await request(f"/api/runs/{run.id}/metrics/", headers=auth, content_length=len(small), chunks=[small])
    assert answer.status == 200, answer.body
    large = metric_body(40_000, key="eval/" + "x" * 60)  # ~4 MB of JSON: over the anonymous limit, under the route's
    assert settings.FILE_UPLOAD_MAX_MEMORY_SIZE < len(large) < settings.API_MAX_REQUEST_BYTES
    answer = await request(
        f"/api/runs/{run.id}/metrics/", headers=auth, chunks=[large[i : i + MiB] for i in range(0, len(large), MiB)]
    )
    assert answer.status == 200, answer.body
    assert await sync_to_async(stored_points)(run_id=run.id) == 40_100


def _session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def _upload_body(study_id: int, rows: int) -> tuple[bytes, str]:
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = jsonl([pairwise_row(i, response_a="a" * 1500) for i in range(rows)])
    return encode_multipart(
        BOUNDARY, {"file": SimpleUploadedFile("items.jsonl", data)}
    ), f"/studies/{study_id}/items/upload/"


@pytest.mark.asyncio
async def test_study_uploads_large_for_a_session_refused_for_strangers(researcher: User) -> None:
    study = await sync_to_async(study_services.create_study)(
        owner=researcher, name="big", kind="pairwise", overlap=1, annotators=[]
    )
    body, path = await sync_to_async(_upload_body)(study.id, 2000)  # ~3.4 MB
    assert len(body) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    anonymous = await request(
        path, headers={"content-type": MULTIPART_CONTENT}, content_length=len(body), chunks=[body]
    )
    assert (anonymous.status, anonymous.pulled) == (401, 0)
    assert b"Log in" in anonymous.body

    cookie = await sync_to_async(_session_cookie)(researcher)
    csrf = "c" * 32  # Django accepts the unmasked secret as the header's token
    logged_in = {"content-type": MULTIPART_CONTENT, "cookie": f"{cookie}; csrftoken={csrf}", "x-csrftoken": csrf}
    over = await request(path, headers=logged_in, content_length=settings.STUDY_UPLOAD_MAX_BYTES + 1, chunks=[body])
    assert (over.status, over.pulled) == (413, 0)
    assert await sync_to_async(Item.objects.filter(study=study).count)() == 0

    accepted = await request(path, headers=logged_in, content_length=len(body), chunks=[body])
    assert accepted.pulled == len(body)
    assert accepted.status < 400, accepted.body[:500]


def test_the_real_server_answers_a_declared_gigabyte_without_waiting_for_it(asgi_server: Any) -> None:
    """Through uvicorn: headers only, a 1 GiB Content-Length and a bogus token; the 413 comes at once."""
    with socket.create_connection(("127.0.0.1", asgi_server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /api/runs/1/metrics/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer arb_r_bogus\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % GiB
        )
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert time.monotonic() - started < 5
