"""The production ASGI app (arbiter.asgi): one thread hop per page, the same middleware doing the same work."""

from __future__ import annotations

import asyncio
import gc
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.test import Client, override_settings

from arbiter.accounts.models import User

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def _request(
    app: Any, method: str, path: str, *, cookie: str = "", body: bytes = b"", root_path: str = ""
) -> tuple[int, dict[str, str], bytes]:
    path = root_path + path  # as uvicorn fills the scope: path includes root_path
    headers = [(b"host", b"127.0.0.1")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    if body:
        headers += [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
        ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": root_path, "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    received = False
    status, response_headers, content = 0, {}, b""

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected; Django cancels this listener when done
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, content
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers.update({k.decode().lower(): v.decode() for k, v in message["headers"]})
        else:
            content += message.get("body", b"")

    await app(scope, receive, send)
    return status, response_headers, content


def _counting_hops() -> tuple[list[int], Any]:
    hops = [0]
    original = SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        hops[0] += 1
        return await original(self, *args, **kwargs)

    return hops, mock.patch.object(SyncToAsync, "__call__", counted)


async def test_an_annotator_page_takes_one_hop_into_the_request_thread(annotator: User) -> None:
    """Sessions, CSRF, auth, messages, the view: one call on the request's thread. Django's own ASGI
    handler made 16 hand-offs for this page (each middleware hook through sync_to_async)."""
    from arbiter.asgi import application

    client = Client()
    await sync_to_async(client.force_login)(annotator)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    hops, counting = _counting_hops()
    with counting:
        status, _, page = await _request(application, "GET", "/annotate/", cookie=cookie)
    assert status == 200 and b"anna" in page  # the session's user, loaded in the request thread
    # request_started, every middleware hook, the view and close(): one call (5 before, 16 with Django's).
    assert hops[0] == 1, hops[0]


async def test_security_headers_csrf_and_sessions_still_apply() -> None:
    from arbiter.asgi import application

    status, headers, _ = await _request(application, "GET", "/accounts/login/")
    assert status == 200
    assert headers["x-frame-options"] == "DENY"  # clickjacking middleware: in the request thread
    assert headers["x-content-type-options"] == "nosniff"  # SecurityMiddleware: on the event loop
    assert headers["referrer-policy"] == "same-origin"
    assert "csrftoken=" in headers["set-cookie"]
    status, _, _ = await _request(application, "POST", "/accounts/login/", body=b"username=a&password=b")
    assert status == 403  # no CSRF token: refused as before
    status, headers, _ = await _request(application, "GET", "/static/vendor/plotly.min.js")
    assert status == 200 and headers["x-content-type-options"] == "nosniff"  # static files keep the headers


async def test_static_files_behind_a_path_prefix_are_still_served() -> None:
    """Behind a proxy mounting the app under /arbiter (uvicorn --root-path), ServeStatic matches the path without
    the prefix, as Django's request.path_info is; the handler must route by the same path."""
    from arbiter.asgi_handler import ArbiterASGIHandler

    handler = ArbiterASGIHandler()
    status, headers, body = await _request(handler, "GET", "/static/vendor/htmx.min.js", root_path="/arbiter")
    assert status == 200 and body and headers["x-content-type-options"] == "nosniff"  # ServeStatic's chain
    status, _, page = await _request(handler, "GET", "/accounts/login/", root_path="/arbiter")
    assert status == 200 and b'action="/arbiter/accounts/login/' in page  # pages still see their prefix


async def test_https_redirect_still_happens_before_anything_else() -> None:
    from arbiter.asgi_handler import ArbiterASGIHandler

    with override_settings(SECURE_SSL_REDIRECT=True):
        handler = ArbiterASGIHandler()
        status, headers, _ = await _request(handler, "GET", "/accounts/login/")
    assert (status, headers["location"]) == (301, "https://127.0.0.1/accounts/login/")


async def test_a_stack_without_async_middleware_is_one_call_too() -> None:
    from arbiter.asgi_handler import ArbiterASGIHandler

    sync_only = ["django.contrib.sessions.middleware.SessionMiddleware", "django.middleware.csrf.CsrfViewMiddleware"]
    with override_settings(MIDDLEWARE=sync_only):
        handler = ArbiterASGIHandler()
        hops, counting = _counting_hops()
        with counting:
            status, _, _ = await _request(handler, "GET", "/healthz")
    assert status == 200
    assert hops[0] == 1, hops[0]  # request_started, the chain and close() in one call


async def test_start_up_objects_are_frozen_out_of_the_collector() -> None:
    import arbiter.asgi  # noqa: F401

    assert gc.get_freeze_count() > 10_000  # Django, the apps and every view


async def test_request_threads_are_reused_and_concurrent_requests_get_their_own() -> None:
    import threading
    import time

    from django.core.signals import request_started

    from arbiter.asgi_handler import ArbiterASGIHandler

    handler = ArbiterASGIHandler()
    seen: list[int] = []

    def record(**_: Any) -> None:  # runs in the request's thread (Django sends it via sync_to_async)
        seen.append(threading.get_ident())
        time.sleep(0.2)  # long enough for the two concurrent requests below to overlap

    request_started.connect(record)
    try:
        for _ in range(2):
            assert (await _request(handler, "GET", "/healthz"))[0] == 200
        assert seen[0] == seen[1]  # one after the other: the same thread, not a new one per request
        seen.clear()
        results = await asyncio.gather(*(_request(handler, "GET", "/healthz") for _ in range(2)))
        assert [r[0] for r in results] == [200, 200]
        assert len(set(seen)) == 2  # at the same time: each in its own thread
    finally:
        request_started.disconnect(record)


async def test_a_request_thread_is_idle_only_when_its_work_is_done() -> None:
    import threading

    from arbiter.asgi_handler import RequestThread

    thread, release = RequestThread(), threading.Event()
    assert thread.idle()
    future = thread.submit(release.wait, 5)
    assert not thread.idle()  # a view still running (its client gone): not handed to the next request
    release.set()
    future.result(timeout=5)
    assert thread.idle()
    thread.shutdown()


async def test_a_checkpoint_download_streams_before_the_zip_is_finished(
    researcher: User, settings: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ASGI a download goes out chunk by chunk: its first bytes are sent while the zip is still being read
    (Django reads a sync iterator whole into memory first, which for a multi-GB checkpoint is the web process's
    memory)."""
    import artifacts.views
    from arbiter.asgi import application
    from training.models import Run, RunStatus
    from training.services import ingest

    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_STORE_URL = ""
    user = researcher
    run = await Run.objects.acreate(owner=user, name="big", recipe="demo", status=RunStatus.SUCCEEDED)
    folder = tmp_path / "artifacts" / "runs" / str(run.id) / "checkpoint-1"
    folder.mkdir(parents=True)
    for name in ("a.bin", "b.bin", "c.bin"):
        (folder / name).write_bytes(b"w" * (1 << 20))
    checkpoint = await sync_to_async(ingest.record_checkpoint)(run=run, step=1, path=str(folder))
    events: list[str] = []
    real_zip = artifacts.views.zip_stream

    def observed(*args: Any, **kwargs: Any) -> Any:
        for chunk in real_zip(*args, **kwargs):
            events.append("read")
            yield chunk
        events.append("zip done")

    monkeypatch.setattr(artifacts.views, "zip_stream", observed)
    client = Client()
    await sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    sent_at: list[int] = []
    link = f"/artifacts/checkpoints/{checkpoint.id}/download/"
    status, headers, body = await _request(_Observing(application, events, sent_at), "GET", link, cookie=cookie)
    assert status == 200 and headers["content-type"] == "application/zip" and body.startswith(b"PK")
    assert "zip done" in events and sent_at
    assert sent_at[0] < events.index("zip done")  # the first bytes left before the zip was finished


class _Observing:
    """The ASGI app, with each body message's position among the zip's reads recorded."""

    def __init__(self, app: Any, events: list[str], sent_at: list[int]) -> None:
        self.app, self.events, self.sent_at = app, events, sent_at

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def observing_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.sent_at.append(len(self.events))
            await send(message)

        await self.app(scope, receive, observing_send)


# A URLconf of this module's own for the streaming tests below (ROOT_URLCONF=__name__).
_stream_events: list[str] = []


def _endless_stream(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    async def parts() -> Any:  # async, as arbiter.streaming serves downloads (a sync one Django reads whole)
        try:
            for i in range(10_000):
                _stream_events.append("part")
                yield b"x" * 1000 + str(i).encode()
        finally:
            _stream_events.append("iterator closed")  # by the loop's finaliser, as under Django's own handler

    return StreamingHttpResponse(parts())


def _page(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok")


urlpatterns: list[Any] = []


def _urls() -> list[Any]:
    from django.urls import path

    return [path("stream/", _endless_stream), path("page/", _page)]


async def test_request_finished_runs_on_the_request_thread_before_the_answer_is_sent() -> None:
    """Database connections go back where the view ran (request_finished on the request's thread), and a page's
    bytes leave only after that: a client that asks again at once finds the connection free."""
    import threading

    from django.core.signals import request_finished, request_started

    from arbiter.asgi_handler import ArbiterASGIHandler

    urlpatterns[:] = _urls()
    threads: dict[str, int] = {}
    order: list[str] = []
    sent_at: list[int] = []

    def started(**_: Any) -> None:
        threads["started"] = threading.get_ident()

    def finished(**_: Any) -> None:
        threads["finished"] = threading.get_ident()
        order.append("finished")

    request_started.connect(started)
    request_finished.connect(finished)
    try:
        with override_settings(ROOT_URLCONF=__name__):
            handler = ArbiterASGIHandler()
            status, _, body = await _request(_Observing(handler, order, sent_at), "GET", "/page/")
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    assert (status, body) == (200, b"ok")
    assert threads["finished"] == threads["started"] != threading.get_ident()  # the request's thread, not the loop
    assert order == ["finished"] and sent_at == [1]  # the body left after request_finished had run


async def test_a_streamed_answer_stops_and_closes_when_its_client_goes_away() -> None:
    from django.core.signals import request_finished

    from arbiter.asgi_handler import ArbiterASGIHandler

    urlpatterns[:] = _urls()
    _stream_events.clear()
    finished: list[bool] = []

    def on_finished(**_: Any) -> None:
        finished.append(True)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/stream/", "raw_path": b"/stream/", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    gone = asyncio.Event()
    body_messages = 0

    async def receive() -> dict[str, Any]:
        if not scope.get("_read"):
            scope["_read"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal body_messages
        if message["type"] == "http.response.body":
            body_messages += 1
            if body_messages == 3:
                gone.set()  # the client goes away after three parts
            await asyncio.sleep(0)  # a socket write yields to the loop

    request_finished.connect(on_finished)
    try:
        with override_settings(ROOT_URLCONF=__name__):
            handler = ArbiterASGIHandler()
            await asyncio.wait_for(handler(scope, receive, send), timeout=30)
    finally:
        request_finished.disconnect(on_finished)
    assert 3 <= _stream_events.count("part") < 100  # stopped soon after the client left, not 10,000 parts
    assert finished == [True]  # the response was closed (request_finished) once, after the stream stopped
