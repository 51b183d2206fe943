"""Websockets on channels_redis with real logged-in users: who may connect, and deltas after ingest."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.test import Client

from arbiter.accounts.models import User
from arbiter.asgi import application
from training.models import Run
from training.payloads import MetricBatch
from training.services import ingest, runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _cookie_for(user: User) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def _connect(run: Run, user: User | None) -> tuple[WebsocketCommunicator, bool]:
    headers = [(b"origin", b"http://127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(_cookie_for)(user)))
    comm = WebsocketCommunicator(application, f"/ws/runs/{run.id}/", headers=headers)
    connected, _ = await comm.connect(timeout=5)
    return comm, connected


async def test_channel_layer_is_redis_pubsub_and_deaf_to_other_redis_databases() -> None:
    """Pub/sub ignores Redis database numbers: the prefix keeps two deployments on one server apart."""
    config = settings.CHANNEL_LAYERS["default"]
    assert config["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    db = urlparse(settings.REDIS_URL).path.strip("/") or "0"
    ours = get_channel_layer()
    other = RedisPubSubChannelLayer(hosts=config["CONFIG"]["hosts"], prefix=f"arbiter.{int(db) + 1}.")
    mine, theirs = await ours.new_channel(), await other.new_channel()
    await ours.group_add("run.1", mine)
    await other.group_add("run.1", theirs)
    try:
        await other.group_send("run.1", {"type": "run.event", "payload": "theirs"})
        await ours.group_send("run.1", {"type": "run.event", "payload": "ours"})
        assert (await asyncio.wait_for(ours.receive(mine), 5))["payload"] == "ours"
        assert (await asyncio.wait_for(other.receive(theirs), 5))["payload"] == "theirs"
    finally:
        await ours.group_discard("run.1", mine)
        await other.flush()


async def test_owner_receives_metrics_and_logs_after_commit(researcher: User) -> None:
    run, _ = await sync_to_async(runs.create_external_run)(owner=researcher, name="ws", config={})
    comm, connected = await _connect(run, researcher)
    assert connected
    batch = MetricBatch(["loss", "loss"], [1, 2], [0.5, 0.25], [1.0, 2.0])
    await sync_to_async(ingest.record_metrics)(run=run, batch=batch)
    delta = await comm.receive_json_from(timeout=5)
    assert delta["kind"] == "delta" and delta["metrics"]["loss"] == [[1, 0.5, 1.0], [2, 0.25, 2.0]]
    assert delta["seq"] == delta["first_seq"] >= 1
    await sync_to_async(ingest.record_logs)(
        run_id=run.id, batch=ingest.lines_batch(stream="stdout", first_seq=0, texts=["hello"])
    )
    delta2 = await comm.receive_json_from(timeout=5)
    assert delta2["seq"] == delta["seq"] + 1 and delta2["logs"][0][1:3] == ["stdout", "hello"]
    await comm.disconnect()


async def test_status_change_reaches_the_socket(researcher: User) -> None:
    run, _ = await sync_to_async(runs.create_external_run)(owner=researcher, name="ws", config={})
    comm, connected = await _connect(run, researcher)
    assert connected
    await sync_to_async(runs.set_status_from_client)(run=run, status="failed", exit_code=3)
    delta = await comm.receive_json_from(timeout=5)
    assert delta["status"]["status"] == "failed" and delta["status"]["exit_code"] == 3
    await comm.disconnect()


@pytest.mark.parametrize("who", ["annotator", "other_researcher", "anonymous"])
async def test_others_cannot_open_a_private_runs_socket(
    who: str, researcher: User, annotator: User, other_researcher: User
) -> None:
    run, _ = await sync_to_async(runs.create_external_run)(owner=researcher, name="private", config={})
    user = {"annotator": annotator, "other_researcher": other_researcher, "anonymous": None}[who]
    comm, connected = await _connect(run, user)
    assert not connected
    await comm.disconnect()


async def test_admin_may_watch_any_run(researcher: User, admin_user: User) -> None:
    run, _ = await sync_to_async(runs.create_external_run)(owner=researcher, name="private", config={})
    comm, connected = await _connect(run, admin_user)
    assert connected
    await comm.disconnect()


async def test_an_idle_socket_stays_open_past_the_channel_layers_blocking_read(researcher: User) -> None:
    """channels_redis waits on BZPOPMIN for brpop_timeout (5 s); a Redis client whose read timeout is not
    longer than that (redis-py 8's default is 5 s) ends the consumer of every socket idle that long."""
    import asyncio

    run, _ = await sync_to_async(runs.create_external_run)(owner=researcher, name="idle", config={})
    comm, connected = await _connect(run, researcher)
    assert connected
    await asyncio.sleep(12)
    batch = MetricBatch(["loss"], [1], [0.5], [1.0])
    await sync_to_async(ingest.record_metrics)(run=run, batch=batch)
    delta = await comm.receive_json_from(timeout=5)
    assert delta["metrics"]["loss"] == [[1, 0.5, 1.0]]
    await comm.disconnect()
