"""Chromium on the real server: chart readability (markers, shared x range, flat series), form sections, diff toggle."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import User
from training.models import Run
from training.payloads import MetricBatch

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]


def _run_with_metrics(owner: User, name: str = "charts", lr: float = 5e-4) -> Run:
    from training.services import ingest, runs

    run, _ = runs.create_external_run(owner=owner, name=name, config={"lr": lr, "seed": 1})
    points = [("loss", s, 2.0 / (1 + s), 1000.0 + s) for s in range(100)]  # a long series, from step 0
    points += [("learning_rate", s, lr, 1000.0 + s) for s in range(50, 100)]  # constant, starting half-way
    points += [("system/cpu_percent", s, 40.0 + s, 1000.0 + 30 * s) for s in range(3)]  # a few samples
    keys, steps, values, times = (list(col) for col in zip(*points, strict=True))
    ingest.record_metrics(run=run, batch=MetricBatch(keys, steps, values, times))
    return run


def _chart(page: Any, key: str, expr: str) -> Any:
    return page.evaluate(f"() => {{ const d = document.querySelector(\"[data-key='{key}']\"); return {expr}; }}")


def test_sparse_series_get_markers_and_charts_share_the_step_range(
    asgi_server: Any, page: Any, login_page: Any, researcher: User
) -> None:
    run = _run_with_metrics(researcher)
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/{run.id}/")
    page.wait_for_function("() => window.arbiterLive && window.arbiterLive.points('system/cpu_percent') === 3")
    page.wait_for_function("() => window.arbiterLive.points('loss') === 100")
    # Three points are drawn as markers (a bare 3-point line looks empty); 100 points as a line.
    assert _chart(page, "system/cpu_percent", "d.data[0].mode") == "lines+markers"
    assert _chart(page, "loss", "d.data[0].mode") == "lines"
    # The hover carries the wall time of every point.
    assert _chart(page, "loss", "d.data[0].customdata.length") == 100
    # Shared x range: the series that starts at step 50 is drawn over the same steps as loss...
    page.wait_for_function(
        "() => JSON.stringify(document.querySelector(\"[data-key='learning_rate']\").layout.xaxis.range) === '[0,99]'"
    )
    assert _chart(page, "loss", "d.layout.xaxis.range") == [0, 99]
    # ...but system samples are not training steps: they keep their own axis.
    assert _chart(page, "system/cpu_percent", "d.layout.xaxis.range") != [0, 99]
    # A constant learning rate reads as its value, not as a line at 0 in [-1, 1].
    low, high = _chart(page, "learning_rate", "d.layout.yaxis.range")
    assert 0 < low < 5e-4 < high < 1e-3
    page.uncheck("#shared-x")
    page.wait_for_function(
        "() => document.querySelector(\"[data-key='learning_rate']\").layout.xaxis.autorange !== false"
    )
    low, _ = _chart(page, "learning_rate", "d._fullLayout.xaxis.range")
    assert low >= 49


def test_rare_form_sections_unfold_and_compare_toggles_identical_fields(
    asgi_server: Any, page: Any, login_page: Any, researcher: User
) -> None:
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/new/?recipe=grpo")
    assert page.is_visible("#id_cfg_learning_rate") and not page.is_visible("#id_cfg_device")
    page.click("details[data-section='hardware'] > summary")
    assert page.is_visible("#id_cfg_device")

    a, b = _run_with_metrics(researcher, "a", 1e-3), _run_with_metrics(researcher, "b", 2e-3)
    page.goto(f"{asgi_server.url}/runs/compare/?runs={a.id},{b.id}")
    keys = "() => [...document.querySelectorAll('#config-diff tbody tr[data-key]')].map(r => r.dataset.key)"
    assert page.evaluate(keys) == ["lr"]
    page.check("#diff-show-all")
    page.wait_for_function(f"() => ({keys})().length === 2")
    assert sorted(page.evaluate(keys)) == ["lr", "seed"]
    assert page.eval_on_selector_all("#config-diff tr.differs", "rows => rows.map(r => r.dataset.key)") == ["lr"]
    assert "all=1" in page.url
