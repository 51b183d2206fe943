"""The foundation's real parts: roles and landing pages, a Celery round trip, a websocket round trip."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from arbiter.accounts.models import Role, User
from tests.factories import TEST_PASSWORD


def test_settings_use_the_real_services() -> None:
    assert settings.DATABASES["default"]["ENGINE"] == "arbiter.postgresql"  # Django's, with our pool check
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert settings.CELERY_BROKER_URL.startswith("redis://")


def test_annotator_lands_on_their_queue(annotator: User, client_for: Any) -> None:
    response = client_for(annotator).get("/")
    assert response.status_code == 302
    assert response["Location"] == "/annotate/"


def test_researcher_lands_on_the_dashboard(researcher: User, client_for: Any) -> None:
    response = client_for(researcher).get("/", follow=True)
    assert response.redirect_chain[-1][0] == "/dashboard/"
    assert b"Recent runs" in response.content


def test_annotator_is_refused_the_dashboard(annotator: User, client_for: Any) -> None:
    assert client_for(annotator).get("/dashboard/").status_code == 403


def test_login_with_the_form_then_logout(researcher: User) -> None:
    client = Client()
    response = client.post("/accounts/login/", {"username": researcher.username, "password": TEST_PASSWORD})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/dashboard/").status_code == 302


def test_wrong_password_is_refused_with_a_message(researcher: User) -> None:
    response = Client().post("/accounts/login/", {"username": researcher.username, "password": "nope"})
    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content


def test_admin_role_grants_django_admin_and_no_other_role_does(db: None) -> None:
    admin = User.objects.create_user("boss", password="x", role=Role.ADMIN)
    annot = User.objects.create_user("ann", password="x", role=Role.ANNOTATOR)
    assert admin.is_staff and admin.is_researcher and admin.is_admin_role
    assert not annot.is_staff and not annot.is_researcher


def test_unknown_role_is_refused_by_the_database(db: None) -> None:
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user("mallory", password="x", role="overlord")


def test_celery_round_trip_through_a_real_worker(celery_worker_app: Any) -> None:
    from arbiter.tasks import ping

    result = ping.delay("hello")
    assert result.get(timeout=20)["pong"] == "hello"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_websocket_round_trip_through_channels_redis(researcher: User) -> None:
    from asgiref.sync import sync_to_async

    from arbiter.asgi import application

    client = Client()
    await sync_to_async(client.force_login)(researcher)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    communicator = WebsocketCommunicator(
        application, "/ws/ping/", headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"ping": 42})
    assert await communicator.receive_json_from(timeout=5) == {"pong": 42, "user": researcher.username}
    await communicator.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_websocket_refuses_anonymous() -> None:
    from arbiter.asgi import application

    communicator = WebsocketCommunicator(application, "/ws/ping/", headers=[(b"origin", b"http://127.0.0.1")])
    connected, _ = await communicator.connect()
    assert not connected


def test_production_settings_pass_check_deploy(tmp_path: Any) -> None:
    """With a real secret and HTTPS on, `check --deploy` finds nothing the project could have fixed."""
    import os
    import subprocess
    import sys

    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DJANGO_SETTINGS_MODULE": "arbiter.settings",
        "SECRET_KEY": "x7Kp2vQ9mZ4tR8wY1nB6cF3hJ5lD0sG-aE7uI2oP9qW4zX8vN1mK6jH3gT5rL0y",
        "HTTPS": "1",
        "ARBITER_VAR_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout


def test_embedded_default_secret_is_flagged_by_check_deploy(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"}}
    env.update(DJANGO_SETTINGS_MODULE="arbiter.settings", ARBITER_VAR_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"], env=env, capture_output=True, text=True, check=False
    )
    assert "security.W009" in out.stdout + out.stderr


def test_cached_user_sees_a_role_change_at_once(researcher: User, client_for: Any) -> None:
    """Sessions resolve users from the cache; demoting a researcher takes effect on the next request."""
    client = client_for(researcher)
    assert client.get("/dashboard/").status_code == 200  # caches the user
    researcher.role = Role.ANNOTATOR
    researcher.save()
    assert client.get("/dashboard/").status_code == 403


def test_deactivated_user_is_logged_out(researcher: User, client_for: Any) -> None:
    client = client_for(researcher)
    assert client.get("/dashboard/").status_code == 200
    researcher.is_active = False
    researcher.save()
    assert client.get("/dashboard/").status_code == 302


@pytest.mark.django_db(transaction=True)
def test_static_files_are_served_by_the_app(asgi_server: Any) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{asgi_server.url}/static/vendor/plotly.min.js") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 1_000_000


@pytest.mark.asyncio
async def test_a_synchronous_orm_call_in_async_code_is_refused(db: None) -> None:
    """Django's async-safety guard is on in the suite (issue 12 item 15): such a call cannot hide in a test."""
    from django.core.exceptions import SynchronousOnlyOperation

    with pytest.raises(SynchronousOnlyOperation):
        User.objects.count()


def test_servers_started_by_the_suite_keep_the_async_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import ASYNC_UNSAFE, platform_env

    monkeypatch.setenv(ASYNC_UNSAFE, "true")  # as while a browser is open
    assert ASYNC_UNSAFE not in platform_env()
