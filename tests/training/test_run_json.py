"""The run resource on the live API (GET /api/runs/ and /api/runs/<id>/) and the SDK's RunRef: origin, parent,
children, archived and tags; another researcher's private retries and resumes are never named."""

from __future__ import annotations

from typing import Any

import pytest
import requests

import arbiter_client
from arbiter.accounts.models import User
from training.models import LogLine, Run, RunOrigin, RunTag
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)


def _run(owner: User, name: str, **fields: Any) -> Run:
    return Run.objects.create(owner=owner, name=name, recipe="demo", status="succeeded", **fields)


def _get(url: str, key: str, **params: Any) -> requests.Response:
    return requests.get(url, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_lineage_and_state_name_only_runs_the_caller_may_see(
    asgi_server: Any, researcher: User, other_researcher: User
) -> None:
    shared = _run(researcher, "base", shared=True)
    RunTag.objects.create(run=shared, name="sweep")
    mine = _run(researcher, "base (retry 1)", parent=shared, origin=RunOrigin.RETRY)
    theirs = _run(other_researcher, "base (resumed @5)", parent=shared, origin=RunOrigin.RESUME)
    archived = _run(researcher, "old")
    Run.objects.filter(id=archived.id).update(archived_at=shared.created_at)
    _, key_a = runs.issue_api_token(user=researcher, name="a")
    _, key_b = runs.issue_api_token(user=other_researcher, name="b")

    body = _get(f"{asgi_server.url}/api/runs/{shared.id}/", key_a).json()
    assert (body["origin"], body["parent"], body["children"]) == ("launched", None, [mine.id])
    assert (body["tags"], body["archived"], body["shared"]) == (["sweep"], False, True)
    assert body["owner"] == researcher.username
    assert "seq" in body and "keys" in body
    assert _get(f"{asgi_server.url}/api/runs/{shared.id}/", key_b).json()["children"] == [theirs.id]
    child = _get(f"{asgi_server.url}/api/runs/{theirs.id}/", key_b).json()
    assert (child["origin"], child["parent"]) == ("resume", shared.id)
    assert _get(f"{asgi_server.url}/api/runs/{theirs.id}/", key_a).status_code == 404

    listed = _get(f"{asgi_server.url}/api/runs/", key_a).json()
    assert [r["id"] for r in listed["runs"]] == [mine.id, shared.id] and listed["next"] is None
    assert {r["id"]: r["children"] for r in listed["runs"]} == {mine.id: [], shared.id: [mine.id]}
    everything = _get(f"{asgi_server.url}/api/runs/", key_a, archived="all").json()["runs"]
    assert [(r["id"], r["archived"]) for r in everything] == [(archived.id, True), (mine.id, False), (shared.id, False)]
    assert theirs.id not in {r["id"] for r in everything}
    first = _get(f"{asgi_server.url}/api/runs/", key_b, limit=1).json()
    assert [r["id"] for r in first["runs"]] == [theirs.id] and first["next"] == theirs.id
    rest = _get(f"{asgi_server.url}/api/runs/", key_b, limit=1, before=first["next"]).json()
    assert [r["id"] for r in rest["runs"]] == [shared.id] and rest["runs"][0]["children"] == [theirs.id]
    bad = _get(f"{asgi_server.url}/api/runs/", key_a, status="done")
    assert (bad.status_code, bad.json()["field"]) == (400, "status")

    # Unshared, the base run is no longer named as the other researcher's parent.
    Run.objects.filter(id=shared.id).update(shared=False)
    api_b = arbiter_client.Api(asgi_server.url, key_b)
    ref = api_b.run(theirs.id)
    assert (ref.origin, ref.parent, ref.children, ref.archived, ref.tags) == ("resume", None, [], False, [])
    api_a = arbiter_client.Api(asgi_server.url, key_a)
    base = next(r for r in api_a.runs() if r.id == shared.id)
    assert [c.id for c in base.children] == [mine.id] and base.tags == ["sweep"] and base.gpus == 1
    assert mine.id in [r.id for r in api_a.runs(archived=None)] and [r.id for r in api_a.runs(archived=True)] == [
        archived.id
    ]


def test_the_list_filters_by_recipe_and_a_part_of_the_name(asgi_server: Any, researcher: User) -> None:
    sweep = [_run(researcher, f"lr-sweep {i}") for i in range(2)]
    dpo = Run.objects.create(owner=researcher, name="LR-SWEEP dpo", recipe="dpo", status="succeeded")
    other = _run(researcher, "baseline")
    _, key = runs.issue_api_token(user=researcher, name="a")
    url = f"{asgi_server.url}/api/runs/"
    assert [r["id"] for r in _get(url, key, q="lr-sweep").json()["runs"]] == [dpo.id, sweep[1].id, sweep[0].id]
    assert [r["id"] for r in _get(url, key, q="sweep", recipe="demo").json()["runs"]] == [sweep[1].id, sweep[0].id]
    assert [r["id"] for r in _get(url, key, recipe="demo", q="base").json()["runs"]] == [other.id]
    assert _get(url, key, recipe="sft").json()["runs"] == []
    for field, value in (("recipe", "r" * 65), ("q", "q" * 201)):
        bad = _get(url, key, **{field: value})
        assert (bad.status_code, bad.json()["field"]) == (400, field)
    api = arbiter_client.Api(asgi_server.url, key)
    assert [r.id for r in api.runs(recipe="dpo", name_contains="Sweep")] == [dpo.id]


def test_only_researchers_list_runs(asgi_server: Any, client_for: Any, annotator: User) -> None:
    assert client_for(annotator).get("/api/runs/").status_code == 403
    assert requests.get(f"{asgi_server.url}/api/runs/", timeout=30).status_code == 401


def test_a_script_deletes_its_own_finished_run_and_nothing_else(
    asgi_server: Any, researcher: User, other_researcher: User, client_for: Any
) -> None:
    """DELETE /api/runs/<id>/ (RunRef.delete()) is the run page's delete (run_records.delete_run, whose file
    removal tests/artifacts/test_run_delete_files.py covers): owner only (a shared run is a 404 to the
    researcher it is shared with), 409 while active or needed, 204 once deleted."""
    from arbiter_client import ArbiterError

    done = _run(researcher, "done", shared=True)
    LogLine.objects.create(run=done, stream="stdout", seq=0, text="hi", time=0)
    busy = Run.objects.create(owner=researcher, name="busy", recipe="demo", status="queued")
    needed = _run(researcher, "needed", config={"max_steps": 3})
    needed.checkpoints.create(step=2, path="/a/checkpoint-2")
    child = runs.resume_run(run=needed, by=researcher)
    _, mine = runs.issue_api_token(user=researcher, name="a")
    _, theirs = runs.issue_api_token(user=other_researcher, name="b")
    url = f"{asgi_server.url}/api/runs/{{}}/"

    def delete(run_id: int, key: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.delete(url.format(run_id), headers=headers, timeout=30)

    assert delete(done.id, None).status_code == 401
    assert _get(url.format(done.id), theirs).status_code == 200  # shared: they may read it...
    assert delete(done.id, theirs).status_code == 404  # ...not delete it
    answer = delete(busy.id, mine)
    assert answer.status_code == 409 and "cancel it before deleting it" in answer.json()["error"]
    answer = delete(needed.id, mine)
    assert answer.status_code == 409 and f"run #{child.id}" in answer.json()["error"]
    session = client_for(researcher)
    assert session.delete(f"/api/runs/{done.id}/").status_code == 401  # a browser session cannot delete by API
    with pytest.raises(ArbiterError) as refused:
        arbiter_client.Api(asgi_server.url, mine).run(busy.id).delete()
    assert refused.value.status == 409
    arbiter_client.Api(asgi_server.url, mine).run(done.id).delete()
    assert not Run.objects.filter(id=done.id).exists() and not LogLine.objects.filter(run_id=done.id).exists()
    assert Run.objects.filter(id__in=[busy.id, needed.id, child.id]).count() == 3
    assert delete(done.id, mine).status_code == 404  # gone
