"""Samples while training: the table ingest endpoint (run token, idempotent, bounded), its reads, the run page's
Samples card (untrusted text shown as text) and sending rows to a study with their provenance."""

from __future__ import annotations

import json
from typing import Any

import pytest

from evaluation.models import Item, Study
from loop.models import ItemSource
from tests.factories import UserFactory
from training.models import RunTable
from training.services import ingest

# The ingest view writes from a worker thread (its own connection): the data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

XSS = "<script>alert(1)</script> **not bold** `x`"


def _post(client: Any, run_id: int, token: str, body: Any) -> Any:
    return client.post(
        f"/api/runs/{run_id}/tables/",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def table(step: int = 10, **extra: Any) -> dict[str, Any]:
    body = {
        "name": "samples",
        "step": step,
        "columns": ["prompt", "completion", "reward"],
        "rows": [["2+2=", "4", 1.0], ["2+2=", "5", 0.0], ["3+3=", XSS, None]],
    }
    body.update(extra)
    return body


def test_a_table_is_stored_once_and_a_resend_changes_nothing(external_run: Any, client_for: Any) -> None:
    run, token = external_run
    client = client_for(None)
    first = _post(client, run.pk, token, table())
    assert first.status_code == 200 and first.json() == {"name": "samples", "step": 10, "rows": 3, "written": 1}
    again = _post(client, run.pk, token, table(rows=[["other", "rows", 0.5]]))
    assert again.status_code == 200 and again.json()["written"] == 0
    stored = RunTable.objects.get(run=run)
    assert stored.rows[2] == ["3+3=", XSS, None]  # the first one wins, byte for byte


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (table(step=-1), 400, "step"),
        (table(name="bad\nname"), 400, "name"),
        (table(columns=["a", "a", "b"]), 400, "columns"),
        (table(rows=[["p", "c"]]), 400, "rows[0]"),
        (table(rows=[["p", "c", {"x": 1}]]), 400, "rows[0][2]"),
        (table(rows=[["p", "c", 1]] * 257), 400, "rows"),
        (table(rows=[["p", "x" * 10_001, 1]]), 400, "rows[0][1]"),
        ([1, 2], 400, "body"),
    ],
)
def test_a_bad_table_is_refused_naming_the_field(
    external_run: Any, client_for: Any, body: Any, status: int, field: str
) -> None:
    run, token = external_run
    response = _post(client_for(None), run.pk, token, body)
    assert response.status_code == status and response.json()["field"] == field
    assert not RunTable.objects.exists()


def test_tables_need_the_runs_token_and_are_capped_per_run(
    external_run: Any, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, token = external_run
    client = client_for(None)
    assert _post(client, run.pk, "arb_r_wrong", table()).status_code == 401
    monkeypatch.setattr(ingest, "MAX_TABLES_PER_RUN", 2)
    assert _post(client, run.pk, token, table(step=1)).status_code == 200
    assert _post(client, run.pk, token, table(step=2)).status_code == 200
    refused = _post(client, run.pk, token, table(step=3))
    assert refused.status_code == 409 and "less often" in refused.json()["error"]


def test_tables_are_read_by_who_may_see_the_run(external_run: Any, client_for: Any, researcher: Any) -> None:
    run, token = external_run
    for step in (10, 20):
        _post(client_for(None), run.pk, token, table(step=step))
    mine = client_for(researcher)
    assert mine.get(f"/api/runs/{run.pk}/tables/").json() == {
        "name": "samples",
        "names": ["samples"],
        "steps": [10, 20],
    }
    body = mine.get(f"/api/runs/{run.pk}/tables/?step=20").json()
    assert body["columns"] == ["prompt", "completion", "reward"] and body["rows"][2][1] == XSS
    assert mine.get(f"/api/runs/{run.pk}/tables/?step=30").status_code == 404
    assert mine.get(f"/api/runs/{run.pk}/tables/?step=9999999999999999999999").status_code == 400
    assert client_for(UserFactory()).get(f"/api/runs/{run.pk}/tables/").status_code == 404


def test_the_samples_card_shows_untrusted_text_as_text(external_run: Any, client_for: Any, researcher: Any) -> None:
    run, token = external_run
    for step in (10, 20):
        _post(client_for(None), run.pk, token, table(step=step, rows=[["p", f"at {step}", 1]] + table()["rows"]))
    html = client_for(researcher).get(f"/runs/{run.pk}/samples/").content.decode()
    assert "at 20" in html and "at 10" not in html  # the latest table by default
    assert 'hx-trigger="every 10s"' in html  # a running run's card follows new tables
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; **not bold**" in html
    pinned = client_for(researcher).get(f"/runs/{run.pk}/samples/?step=10").content.decode()
    assert "at 10" in pinned and 'hx-trigger="every 10s"' not in pinned
    assert client_for(UserFactory()).get(f"/runs/{run.pk}/samples/").status_code == 404


def test_openapi_describes_the_tables_and_loop_endpoints(client_for: Any) -> None:
    doc = client_for(None).get("/api/openapi.json").json()
    assert "post" in doc["paths"]["/api/runs/{run_id}/tables/"]
    assert doc["components"]["schemas"]["Table"]["properties"]["rows"]["maxItems"] == 256
    assert {"/api/lineage/runs/{run_id}/", "/api/lineage/studies/{study_id}/", "/api/leaderboard/"} <= set(doc["paths"])


def _send(client: Any, run_id: int, step: int, rows: list[int], **extra: Any) -> Any:
    data = {"name": "samples", "step": step, "rows": rows, "target": "new-rating", **extra}
    return client.post(f"/samples/runs/{run_id}/send/", data)


def test_rows_go_to_a_rating_study_with_the_run_step_as_their_author(
    external_run: Any, client_for: Any, researcher: Any, annotator: Any
) -> None:
    run, token = external_run
    _post(client_for(None), run.pk, token, table())
    client = client_for(researcher)
    confirm = client.get(f"/samples/runs/{run.pk}/send/?name=samples&step=10&rows=0&rows=2")
    assert confirm.status_code == 200 and "Send 2 rows" in confirm.content.decode()
    response = _send(client, run.pk, 10, [0, 2], new_name="table rows", annotators=[annotator.pk])
    assert response.status_code == 302
    study = Study.objects.get(name="table rows")
    assert (study.kind, study.item_count) == ("rating", 2)
    responses = sorted(Item.objects.filter(study=study).values_list("payload__response", flat=True))
    assert responses == ["4", XSS]
    sources = list(ItemSource.objects.filter(item__study=study).select_related("policy"))
    assert {(s.policy.run_id, s.policy.step, s.side) for s in sources} == {(run.pk, 10, "response")}
    again = _send(client, run.pk, 10, [0], target=str(study.pk))
    assert again.status_code == 422 and "already in this study" in again.content.decode()


def test_pairwise_needs_two_rows_of_one_prompt(external_run: Any, client_for: Any, researcher: Any) -> None:
    run, token = external_run
    _post(client_for(None), run.pk, token, table())
    client = client_for(researcher)
    lonely = _send(client, run.pk, 10, [0, 2], target="new-pairwise")
    assert lonely.status_code == 422 and "has no partner" in lonely.content.decode()
    ok = _send(client, run.pk, 10, [0, 1], target="new-pairwise", new_name="pair")
    assert ok.status_code == 302
    item = Item.objects.get(study__name="pair")
    assert (item.payload["response_a"], item.payload["response_b"]) == ("4", "5")
    assert _send(client, run.pk, 11, [0]).status_code == 404  # no table at that step
    assert _send(client_for(UserFactory()), run.pk, 10, [0]).status_code == 404  # not their run


@pytest.mark.parametrize("name", ["sam\x00ples", "s" * 65])
def test_a_table_name_no_table_can_have_is_a_404(
    external_run: Any, client_for: Any, researcher: Any, name: str
) -> None:
    """The table is looked up before the form is read: a NUL (which PostgreSQL refuses in a query) or a name
    longer than any table's is no table, not a 500."""
    run, token = external_run
    _post(client_for(None), run.pk, token, table())
    client = client_for(researcher)
    asked = client.get(f"/samples/runs/{run.pk}/send/", {"name": name, "step": 10, "rows": 0})
    assert asked.status_code in {400, 404}  # 400: the NUL in a query string, refused before any view
    assert _send(client, run.pk, 10, [0], name=name).status_code == 404
