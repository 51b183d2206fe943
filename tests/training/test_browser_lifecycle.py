"""Chromium on the real server: rename and tag a run, pin and reorder chart panels (kept on reload), step N of M."""

from __future__ import annotations

import json
from typing import Any

import pytest

from arbiter.accounts.models import User
from training.models import PinnedPanel, Run
from training.payloads import MetricBatch

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]


def _run(owner: User, name: str, keys: tuple[str, ...], *, max_steps: int = 100, steps: int = 40) -> Run:
    from training.services import ingest, runs

    run, _ = runs.create_external_run(owner=owner, name=name, config={"max_steps": max_steps})
    points = [(k, s, 1.0 / s, 1000.0 + 2 * s) for k in keys for s in range(1, steps + 1)]
    cols = [list(c) for c in zip(*points, strict=True)]
    ingest.record_metrics(run=run, batch=MetricBatch(cols[0], cols[1], cols[2], cols[3]))
    return run


def test_rename_and_tag_a_run_from_its_page(asgi_server: Any, page: Any, login_page: Any, researcher: User) -> None:
    run = _run(researcher, "before", ("loss",))
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/{run.id}/")
    page.click("#run-edit > summary")
    page.fill("#id_edit-name", "after <b>bold</b>")
    page.fill("#id_edit-tags", "baseline, lr-sweep")
    page.click("#run-edit-save")
    page.wait_for_function("() => document.getElementById('run-name').textContent === 'after <b>bold</b>'")
    page.reload()
    assert page.text_content("#run-name") == "after <b>bold</b>"  # shown as typed, not as markup
    assert page.eval_on_selector_all("#run-meta .tag", "ts => ts.map(t => t.textContent)") == ["baseline", "lr-sweep"]
    run.refresh_from_db()
    assert run.name == "after <b>bold</b>"


def test_pinned_panels_come_first_in_the_users_order_after_a_reload_and_on_other_runs(
    asgi_server: Any, page: Any, login_page: Any, researcher: User
) -> None:
    keys = ("loss", "reward", "kl")
    run = _run(researcher, "pins", keys)
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/{run.id}/")
    page.wait_for_function("() => window.arbiterLive && window.arbiterLive.keys().length === 3")
    page.click("[data-panel='reward'] .pin-toggle")
    page.click("[data-panel='kl'] .pin-toggle")
    page.wait_for_function("() => window.arbiterLive.pinsSaved === JSON.stringify({keys: ['reward', 'kl']})")
    page.click("[data-panel='kl'] .move-earlier")
    page.wait_for_function("() => window.arbiterLive.pinsSaved === JSON.stringify({keys: ['kl', 'reward']})")
    assert page.evaluate("window.arbiterLive.pinned()") == ["kl", "reward"]
    assert list(PinnedPanel.objects.filter(user=researcher).values_list("key", flat=True)) == ["kl", "reward"]

    page.reload()
    page.wait_for_function("() => window.arbiterLive && window.arbiterLive.keys().length === 3")
    assert page.evaluate("window.arbiterLive.pinned()") == ["kl", "reward"]
    # The pinned section is the first on the page, and the charts in it are drawn.
    first = page.eval_on_selector("#live-run section.chart-group", "s => s.dataset.group")
    assert first == "pinned"
    page.wait_for_function("() => document.querySelector(\"[data-key='kl']\").data !== undefined")
    # Pins belong to the user, not to the run: another run of theirs opens with the same order.
    other = _run(researcher, "other", ("reward", "kl", "entropy"))
    page.goto(f"{asgi_server.url}/runs/{other.id}/")
    page.wait_for_function("() => window.arbiterLive && window.arbiterLive.keys().length === 3")
    assert page.evaluate("window.arbiterLive.pinned()") == ["kl", "reward"]
    page.click("[data-panel='kl'] .pin-toggle")  # unpin: kl goes back to its group
    page.wait_for_function("() => window.arbiterLive.pinsSaved === JSON.stringify({keys: ['reward']})")
    assert page.evaluate("window.arbiterLive.pinned()") == ["reward"]


def test_run_page_shows_step_n_of_m_with_an_eta(asgi_server: Any, page: Any, login_page: Any, researcher: User) -> None:
    run = _run(researcher, "progress", ("loss",), max_steps=100, steps=40)
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/{run.id}/")
    assert " ".join(page.text_content("#run-progress").split()).startswith("step 40 of 100")
    # 39 steps took 78 s: 60 more at 2 s a step.
    assert page.text_content("#run-eta").strip() == "· about 2 min 0 s left"
    assert page.get_attribute("#run-progress progress", "value") == "40.0"


def test_pins_api_refuses_bad_bodies_with_the_field_named(client_for: Any, researcher: User) -> None:
    client = client_for(researcher)

    def post(body: Any) -> Any:
        return client.post("/runs/pins/", json.dumps(body), content_type="application/json")

    assert post({"keys": "loss"}).json() == {"error": "Expected a list of metric names.", "field": "keys"}
    assert post({"keys": ["a", "a"]}).json()["field"] == "keys[1]"
    assert post({"keys": ["ok", 3]}).status_code == 400
    assert post({"keys": [f"k{i}" for i in range(51)]}).status_code == 400
    bad = client.post("/runs/pins/", "{", content_type="application/json")
    assert (bad.status_code, bad.json()["field"]) == (400, "body")
    assert post({"keys": ["b", "a"]}).json() == {"keys": ["b", "a"]}
    assert client.get("/runs/pins/").json() == {"keys": ["b", "a"]}
    # A lone surrogate or bytes that are not UTF-8: the body is not JSON (was a 500 when PostgreSQL refused it).
    for raw in (b'{"keys": ["\\ud800"]}', b'{"keys": ["\xff"]}'):
        refused = client.post("/runs/pins/", raw, content_type="application/json")
        assert (refused.status_code, refused.json()["field"]) == (400, "body")
    assert client.get("/runs/pins/").json() == {"keys": ["b", "a"]}
