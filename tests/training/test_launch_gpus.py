"""A run asks for N GPUs from the launch form, the API and the SDK: 2 is accepted when a worker on the queue has 2
slots; 0, 99, "x" and more than any worker has are refused with the `gpus` field named, and nothing is queued."""

from __future__ import annotations

from typing import Any

import pytest

import arbiter_client
from arbiter.accounts.models import User
from training.models import Run
from training.services import runs
from workers.models import WorkerCredential
from workers.services import issue_worker_credential

DEMO = {"max_steps": 1}


def _worker_with_two_slots() -> None:
    credential, _ = issue_worker_credential(name="gpu-a")
    WorkerCredential.objects.filter(id=credential.id).update(queues=["gpu"], slots=["0", "1"])


@pytest.mark.django_db
@pytest.mark.parametrize(("gpus", "refused"), [("2", False), ("0", True), ("99", True), ("x", True), ("3", True)])
def test_the_launch_form_takes_gpus_and_names_the_field_when_refused(
    client_for: Any, researcher: User, gpus: str, refused: bool
) -> None:
    _worker_with_two_slots()
    data = {"recipe": "demo", "queue": "gpu", "gpus": gpus, "cfg_max_steps": "1"}
    response = client_for(researcher).post("/runs/new/", data)
    if not refused:
        assert response.status_code == 302
        assert Run.objects.get().gpus == 2
        page = client_for(researcher).get(response["Location"]).content.decode()
        assert 'id="run-gpus"' in page and "2 GPUs" in page
        return
    assert response.status_code == 422
    assert list(response.context["form"].errors) == ["gpus"]
    assert 'id="field-gpus"' in response.content.decode()
    assert Run.objects.count() == 0


@pytest.mark.django_db
def test_the_launch_form_without_gpus_asks_for_one(client_for: Any, researcher: User) -> None:
    response = client_for(researcher).post("/runs/new/", {"recipe": "demo", "queue": "gpu", "cfg_max_steps": "1"})
    assert response.status_code == 302 and Run.objects.get().gpus == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("gpus", "status"), [(2, 201), (0, 422), (99, 422), (3, 422), ("x", 400), ("2", 400), (2.0, 400), (None, 400)]
)
def test_the_launch_api_takes_gpus_and_names_the_field_when_refused(
    client: Any, researcher: User, gpus: Any, status: int
) -> None:
    _worker_with_two_slots()
    _, key = runs.issue_api_token(user=researcher, name="k")
    body = {"recipe": "demo", "config": DEMO, "gpus": gpus}
    response = client.post(
        "/api/runs/launch/", body, content_type="application/json", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == status, response.content
    if status == 201:
        run = Run.objects.get()
        assert (run.gpus, response.json()["gpus"]) == (2, 2)
        assert client.get(f"/api/runs/{run.id}/", headers={"Authorization": f"Bearer {key}"}).json()["gpus"] == 2
    else:
        assert response.json()["field"] == "gpus"
        assert Run.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_sdk_launches_on_n_gpus_and_sees_the_refusal_field(asgi_server: Any, researcher: User) -> None:
    _worker_with_two_slots()
    _, key = runs.issue_api_token(user=researcher, name="k")
    api = arbiter_client.Api(asgi_server.url, key)
    ref = api.launch("demo", DEMO, name="two", gpus=2)
    assert ref.state()["gpus"] == 2 and Run.objects.get(id=ref.id).gpus == 2
    with pytest.raises(arbiter_client.ArbiterError) as refused:
        api.launch("demo", DEMO, gpus=3)
    assert (refused.value.status, refused.value.field) == (422, "gpus")
    assert "has 3 GPU slots" in str(refused.value)
    Run.objects.filter(id=ref.id).update(status="cancelled")  # a later worker fixture has nothing of it to run
