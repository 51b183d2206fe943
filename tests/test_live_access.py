"""Open websockets stop streaming when access changes (issue 12 item 2): unshare, logout, deactivation, password change.

Real sessions, the real ASGI application and channels_redis; every change is made the way the
product makes it (a service, the logout view, a model save), plus one behind the signals' back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.sessions.backends.cached_db import SessionStore
from django.test import Client

from arbiter.accounts.models import User
from arbiter.asgi import application
from evaluation import services as study_services
from evaluation.models import Study
from training.consumers import RunConsumer
from training.models import Run
from training.payloads import MetricBatch
from training.services import ingest, runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _cookie(client: Client) -> bytes:
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def _open(path: str, client: Client) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"cookie", _cookie(client))]
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    return comm


async def _closed_forbidden(comm: WebsocketCommunicator, timeout: float = 5) -> bool:
    """True when the server closes the socket with 4403 before sending any more data."""
    message = await comm.receive_output(timeout=timeout)
    assert message["type"] == "websocket.close", message  # not one more delta
    return bool(message.get("code") == 4403)


async def _log_point(run: Run, step: int) -> None:
    batch = MetricBatch(["loss"], [step], [0.5], [1.0])
    await sync_to_async(ingest.record_metrics)(run=run, batch=batch)


@pytest.fixture
def shared_run(researcher: User) -> Run:
    run, _ = runs.create_external_run(owner=researcher, name="shared", config={})
    Run.objects.filter(id=run.id).update(shared=True)
    run.refresh_from_db()
    return run


async def test_unsharing_a_run_closes_another_researchers_socket_and_not_the_owners(
    shared_run: Run, researcher: User, other_researcher: User
) -> None:
    owner = await _open(f"/ws/runs/{shared_run.id}/", await sync_to_async(_logged_in)(researcher))
    other = await _open(f"/ws/runs/{shared_run.id}/", await sync_to_async(_logged_in)(other_researcher))
    await _log_point(shared_run, 1)
    assert (await other.receive_json_from(timeout=5))["metrics"]["loss"][0][0] == 1
    assert (await owner.receive_json_from(timeout=5))["metrics"]["loss"][0][0] == 1

    shared_run.shared = False
    await sync_to_async(shared_run.save)()
    assert await _closed_forbidden(other)
    await _log_point(shared_run, 2)
    assert (await owner.receive_json_from(timeout=5))["metrics"]["loss"][0][0] == 2
    await owner.disconnect()


async def test_an_unshare_behind_the_signals_back_stops_the_stream_within_the_recheck_interval(
    shared_run: Run, other_researcher: User, settings: Any
) -> None:
    settings.LIVE_ACCESS_RECHECK_S = 0.3
    other = await _open(f"/ws/runs/{shared_run.id}/", await sync_to_async(_logged_in)(other_researcher))
    await sync_to_async(Run.objects.filter(id=shared_run.id).update)(shared=False)  # no signal
    await asyncio.sleep(0.5)
    await _log_point(shared_run, 1)
    assert await _closed_forbidden(other)


async def test_logging_out_closes_the_sockets_of_that_session(shared_run: Run, other_researcher: User) -> None:
    client = await sync_to_async(_logged_in)(other_researcher)
    run_socket = await _open(f"/ws/runs/{shared_run.id}/", client)
    ping_socket = await _open("/ws/ping/", client)
    response = await sync_to_async(client.post)("/accounts/logout/")
    assert response.status_code == 302
    assert await _closed_forbidden(run_socket)
    assert await _closed_forbidden(ping_socket)


@pytest.mark.parametrize("change", ["deactivate", "password"])
async def test_deactivation_or_a_password_change_closes_open_sockets(
    change: str, shared_run: Run, other_researcher: User
) -> None:
    other = await _open(f"/ws/runs/{shared_run.id}/", await sync_to_async(_logged_in)(other_researcher))

    def apply() -> None:
        user = User.objects.get(id=other_researcher.id)
        if change == "deactivate":
            user.is_active = False
        else:
            user.set_password("a-new-and-different-password")
        user.save()

    await sync_to_async(apply)()
    assert await _closed_forbidden(other)


@pytest.mark.parametrize("how", ["study side", "user side", "update_study"])
async def test_unsharing_a_study_closes_the_readers_socket(how: str, researcher: User, other_researcher: User) -> None:
    study: Study = await sync_to_async(study_services.create_study)(
        owner=researcher, name="s", kind="pairwise", overlap=1, annotators=[], shared_with=[other_researcher]
    )
    other = await _open(f"/ws/studies/{study.id}/", await sync_to_async(_logged_in)(other_researcher))
    snapshot = await other.receive_json_from(timeout=5)
    assert snapshot["kind"] == "progress"

    def unshare() -> None:
        if how == "study side":
            study.shared_with.remove(other_researcher)
        elif how == "user side":
            other_researcher.shared_studies.remove(study)
        else:
            locked = Study.objects.get(id=study.id)
            study_services.update_study(
                study=locked,
                name=locked.name,
                instructions=locked.instructions,
                overlap=locked.overlap,
                lease_seconds=locked.lease_seconds,
                accuracy_threshold=locked.accuracy_threshold,
                scale_labels=locked.scale_labels,
                annotators=[],
                shared_with=[],
            )

    await sync_to_async(unshare)()
    assert await _closed_forbidden(other)


class _CountingRunConsumer(RunConsumer):
    """The run page's consumer, counting the access decisions it makes (each one is real: session, user, run)."""

    calls = 0

    def allowed(self, user: Any) -> bool:
        self.calls += 1
        return super().allowed(user)


async def _consumer_for(run: Run, client: Client) -> _CountingRunConsumer:
    key = await sync_to_async(lambda: client.session.session_key)()
    consumer = _CountingRunConsumer()
    consumer.run_id = run.id
    consumer.scope = {"session": SessionStore(key), "user": await sync_to_async(get_user)(client)}
    return consumer


async def test_a_streaming_socket_decides_again_before_its_decision_expires_and_never_waits_for_it(
    shared_run: Run, other_researcher: User, settings: Any
) -> None:
    settings.LIVE_ACCESS_RECHECK_S = 2.0
    consumer = await _consumer_for(shared_run, await sync_to_async(_logged_in)(other_researcher))
    consumer._decided(started=time.monotonic())
    await asyncio.sleep(1.65)  # past the refresh point (50-80% of the interval), before the expiry
    assert await consumer.still_allowed()  # answered from the decision it has...
    refresh = consumer._refresh
    assert refresh is not None and consumer.calls == 0  # ...while the next one is made in the background
    await refresh
    assert consumer.calls == 1
    await asyncio.sleep(0.6)  # the first decision has expired; the background one holds
    assert await consumer.still_allowed()
    assert consumer.calls == 1


async def test_a_check_begun_before_an_access_change_grants_nothing(shared_run: Run, researcher: User) -> None:
    consumer = await _consumer_for(shared_run, await sync_to_async(_logged_in)(researcher))
    begun = time.monotonic()
    consumer._invalidated_at = time.monotonic()  # what access_recheck records when a change is announced
    consumer._decided(started=begun)
    assert consumer._valid_until == 0.0
    consumer._decided(started=time.monotonic())
    assert consumer._valid_until > time.monotonic()
