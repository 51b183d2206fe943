"""Live progress over a real websocket (channels_redis) with a real logged-in session."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from arbiter.asgi import application
from evaluation import services

pytestmark = pytest.mark.django_db(transaction=True)


def _headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://127.0.0.1")]


def test_researcher_sees_progress_when_a_judgment_lands(researcher, annotator, make_study, settings) -> None:
    settings.EVALUATION_PROGRESS_THROTTLE_S = 0
    study = make_study(n_items=2, overlap=1, annotators=[annotator])
    headers = _headers(researcher)  # the session is written here: no database call inside the event loop

    async def scenario() -> None:
        ws = WebsocketCommunicator(application, f"/ws/studies/{study.pk}/", headers=headers)
        connected, _ = await ws.connect()
        assert connected
        snapshot = await ws.receive_json_from(timeout=5)
        assert (snapshot["kind"], snapshot["judgments"], snapshot["target"]) == ("progress", 0, 2)

        def judge() -> None:
            a = services.next_assignment(annotator=annotator, study=study)
            services.submit_judgment(annotator=annotator, assignment_id=a.pk, data={"choice": "left"})

        await sync_to_async(judge)()
        message = await ws.receive_json_from(timeout=5)
        while message["judgments"] == 0:  # a release sweep may announce first
            message = await ws.receive_json_from(timeout=5)
        assert message["judgments"] == 1 and message["seq"] == 1 and message["percent"] == 50.0
        await ws.disconnect()

    asyncio.run(scenario())


@pytest.mark.parametrize("who", ["annotator", "other_researcher"])
def test_socket_refuses_people_without_access(who, request, make_study) -> None:
    user = request.getfixturevalue(who)
    study = make_study(n_items=1)
    headers = _headers(user)

    async def scenario() -> None:
        ws = WebsocketCommunicator(application, f"/ws/studies/{study.pk}/", headers=headers)
        connected, _ = await ws.connect()
        assert not connected

    asyncio.run(scenario())
