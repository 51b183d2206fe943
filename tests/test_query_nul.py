"""A NUL in any query parameter is a 400 naming it (each of these was a 500: PostgreSQL text, or a path check)."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import User
from training.models import Run

pytestmark = pytest.mark.django_db


def test_a_nul_in_a_query_parameter_is_a_400_naming_it(client_for: Any, researcher: User) -> None:
    run = Run.objects.create(owner=researcher, name="r", recipe="demo", status="succeeded")
    client = client_for(researcher)
    for url, field in [
        ("/runs/?tag=%00", "tag"),
        ("/runs/?q=a%00", "q"),
        ("/studies/?tag=%00", "tag"),
        (f"/runs/{run.id}/samples/?name=%00", "name"),
        ("/runs/new/?recipe=dpo&dataset=/a%00b", "dataset"),
        ("/runs/new/?recipe=dpo&dataset=/tmp/x&model=%00", "model"),
    ]:
        response = client.get(url)
        assert response.status_code == 400, url
        assert f"query parameter '{field}' must not contain NUL" in response.content.decode()
    api = client.get(f"/api/runs/{run.id}/metrics/?key=%00")
    assert (api.status_code, api.json()["field"]) == (400, "key")
    assert client.get("/runs/?tag=ok").status_code == 200
