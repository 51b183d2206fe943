"""Chromium: user strings given to Plotly render as typed (issue 12 item 11).

Plotly draws a subset of HTML in every label (titles, legends, hover boxes, tick labels): a run or
model name like `<a href=…>` would become a live link, `<b>` bold text, and `%{y}` in a hovertemplate a
value. Names with `|` used to be split into the wrong legend labels on the compare page.
"""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import Role, User
from evaluation import services as study_services
from tests.factories import UserFactory
from training.payloads import MetricBatch
from training.services import ingest, runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

HTML_NAME = '<b>bold</b> <a href="https://example.org/x">link</a> & <i>co</i>'
PIPE_NAME = "left|right"
TEMPLATE_NAME = "%{y} 100%"

# Everything Plotly draws for a chart: its SVG layers plus the hover layer.
SVG_TEXT = "(sel) => [...document.querySelectorAll(sel)].map((n) => n.textContent)"


def _styled_or_linked(page: Any, root: str) -> int:
    """Elements Plotly creates only when it interprets markup: links, and bold/italic/styled spans."""
    return int(
        page.evaluate(
            f"""() => [...document.querySelectorAll("{root} a, {root} tspan[style]")]
                .filter((n) => n.tagName === "a" || /bold|italic/.test(n.getAttribute("style") || "")).length"""
        )
    )


def test_compare_legend_and_hover_show_run_names_as_typed(
    asgi_server: Any, page: Any, login_page: Any, researcher: User
) -> None:
    made = []
    for name in (HTML_NAME, PIPE_NAME, TEMPLATE_NAME):
        run, _ = runs.create_external_run(owner=researcher, name=name, config={})
        ingest.record_metrics(run=run, batch=MetricBatch(["loss"] * 20, list(range(20)), [1.0] * 20, [0.0] * 20))
        made.append(run)
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/compare/?runs={','.join(str(r.id) for r in made)}")
    page.wait_for_function("() => document.querySelectorAll('#compare-chart .legend .traces').length === 3")

    legend = page.evaluate(SVG_TEXT, "#compare-chart .legend .legendtext")
    assert legend == [f"#{r.id} {r.name}" for r in made]  # three labels, `|` kept, markup as text
    assert _styled_or_linked(page, "#compare-chart") == 0

    # The hover box of one step: every run's line, named as typed, and no %{y} filled in from a name.
    page.evaluate(
        "() => Plotly.Fx.hover(document.getElementById('compare-chart'),"
        " [0, 1, 2].map((c) => ({curveNumber: c, pointNumber: 10})))"
    )
    page.wait_for_function("() => document.querySelector('#compare-chart .hoverlayer').textContent.length > 0")
    hover = page.evaluate("() => document.querySelector('#compare-chart .hoverlayer').textContent")
    for run in made:
        assert f"#{run.id} {run.name}" in hover, hover
    assert _styled_or_linked(page, "#compare-chart .hoverlayer") == 0


def test_study_results_axis_labels_show_model_names_as_typed(
    asgi_server: Any, page: Any, login_page: Any, researcher: User
) -> None:
    annotator = UserFactory(role=Role.ANNOTATOR)
    model_a, model_b = "<i>alpha</i>", '<a href="https://example.org">beta</a>|2'
    rows = [
        {"prompt": f"Q{i}?", "response_a": "A", "response_b": "B", "model_a": model_a, "model_b": model_b}
        for i in range(4)
    ]
    study = study_services.create_study(
        owner=researcher, name="labels", kind="pairwise", overlap=1, annotators=[annotator]
    )
    from tests.evaluation.conftest import jsonl

    study_services.import_items(study=study, data=jsonl(rows))
    while (assignment := study_services.next_assignment(annotator=annotator, study=study)) is not None:
        study_services.submit_judgment(annotator=annotator, assignment_id=assignment.pk, data={"choice": "left"})

    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/studies/{study.id}/results/")
    for chart in ("#chart-win-rates", "#chart-ratings"):
        page.wait_for_function(f"() => document.querySelectorAll('{chart} .xtick text').length === 2")
        ticks = sorted(page.evaluate(SVG_TEXT, f"{chart} .xtick text"))
        assert ticks == sorted([model_a, model_b]), ticks
        assert _styled_or_linked(page, chart) == 0


def test_models_leaderboard_shows_run_names_as_typed(
    asgi_server: Any, page: Any, login_page: Any, researcher: User, tmp_path: Any
) -> None:
    """The Models page's leaderboard labels each checkpoint "#id <run name> @ step N" on its axis and hover."""
    from loop.services.policies import policy_for_checkpoint
    from tests.loop.conftest import judge, sourced_pairwise_study
    from training.models import Checkpoint, Run

    annotator = UserFactory(role=Role.ANNOTATOR)
    run = Run.objects.create(owner=researcher, name=HTML_NAME, recipe="demo_grpo", status="succeeded")
    early, late = (
        policy_for_checkpoint(checkpoint=Checkpoint.objects.create(run=run, step=s, path=str(tmp_path / f"c{s}")))
        for s in (10, 20)
    )
    study = sourced_pairwise_study(researcher, [(early, late)] * 4, annotators=[annotator])
    judge(study, annotator, ["b", "b", "a", "b"])
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/models/")
    page.wait_for_function("() => document.querySelectorAll('#leaderboard .ytick').length === 2")

    ticks = page.evaluate(SVG_TEXT, "#leaderboard .ytick")
    assert sorted(ticks) == sorted([f"#{run.id} {HTML_NAME} @ step 10", f"#{run.id} {HTML_NAME} @ step 20"])
    assert _styled_or_linked(page, "#leaderboard") == 0
    chart = "document.querySelector('#leaderboard .js-plotly-plot')"
    page.evaluate(f"() => Plotly.Fx.hover({chart}, [{{curveNumber: 0, pointNumber: 0}}])")
    page.wait_for_function("() => document.querySelector('#leaderboard .hoverlayer').textContent.length > 0")
    hover = page.evaluate("() => document.querySelector('#leaderboard .hoverlayer').textContent")
    assert HTML_NAME in hover and _styled_or_linked(page, "#leaderboard .hoverlayer") == 0
