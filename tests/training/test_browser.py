"""Chromium on the real stack: launch from the form, watch the metric arrive live, cancel with the button."""

from __future__ import annotations

import re
from typing import Any

import pytest

from arbiter.accounts.models import User
from tests.training.conftest import wait_status
from training.models import Run

pytestmark = pytest.mark.timeout(240)


def _launch(page: Any, base: str, *, max_steps: int, delay: float) -> Run:
    page.goto(f"{base}/runs/new/")
    page.click("a.recipe[href*='recipe=demo']")
    page.fill("#id_name", "browser run")
    page.fill("#id_cfg_max_steps", str(max_steps))
    page.fill("#id_cfg_step_delay_s", str(delay))
    page.click("#launch")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    return Run.objects.get(id=int(page.url.rstrip("/").rsplit("/", 1)[1]))


def test_launched_runs_metric_appears_live_in_the_chart(
    live_stack: Any, page: Any, login_page: Any, researcher: User
) -> None:
    login_page(page, live_stack.url, researcher)
    run = _launch(page, live_stack.url, max_steps=100, delay=0.1)
    page.wait_for_function("() => window.arbiterLive && window.arbiterLive.points('loss') > 0", timeout=90_000)
    # Points keep arriving over the socket (appended, not reloaded) while the run trains.
    page.wait_for_function("() => window.arbiterLive.deltas > 3", timeout=60_000)
    plotted = page.evaluate("() => document.querySelector(\"[data-key='loss']\").data[0].x.length")
    assert plotted > 0
    page.wait_for_selector("#log-tail div", timeout=30_000)
    run = wait_status(run, {"succeeded", "failed"}, timeout=120)
    assert run.status == "succeeded"
    page.wait_for_selector("#run-status:has-text('Succeeded')", timeout=30_000)
    page.wait_for_function("() => window.arbiterLive.points('loss') === 100", timeout=30_000)


def test_cancel_button_stops_the_run(live_stack: Any, page: Any, login_page: Any, researcher: User) -> None:
    login_page(page, live_stack.url, researcher)
    run = _launch(page, live_stack.url, max_steps=5000, delay=0.2)
    page.wait_for_selector("#run-status:has-text('Running')", timeout=90_000)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-run")
    page.wait_for_selector("#run-status:has-text('Cancelled')", timeout=60_000)
    assert wait_status(run, {"cancelled", "failed"}, timeout=30).status == "cancelled"
    assert page.is_visible("#retry-run")


@pytest.mark.django_db(transaction=True)
def test_compare_overlays_the_chosen_runs_curves(
    asgi_server: Any, page: Any, login_page: Any, researcher: User
) -> None:
    from training.payloads import MetricBatch
    from training.services import ingest, runs

    chosen = []
    for lr in (0.1, 0.2):
        run, _ = runs.create_external_run(owner=researcher, name=f"lr={lr}", config={"lr": lr, "seed": 1})
        ingest.record_metrics(
            run=run, batch=MetricBatch(["loss"] * 50, list(range(50)), [lr * s for s in range(50)], [0.0] * 50)
        )
        chosen.append(run)
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/compare/?runs={chosen[0].id},{chosen[1].id}")
    page.wait_for_function("() => document.getElementById('compare-chart').dataset.traces === '2'")
    lengths = page.evaluate("() => document.getElementById('compare-chart').data.map(t => t.x.length)")
    assert lengths == [50, 50]
    # Only `lr` differs (`seed` is the same in both): one row in the diff.
    assert page.eval_on_selector_all("#config-diff tbody th", "ths => ths.map(th => th.textContent)") == ["lr"]
