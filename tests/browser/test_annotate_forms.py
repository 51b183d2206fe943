"""Chromium at 1280×800 and 1920×1080: annotator forms that scale to real items, for every study kind, and results
charts that stay inside their cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evaluation import services
from evaluation.models import Judgment

pytestmark = pytest.mark.django_db(transaction=True)

VIEWPORTS = [(1280, 800), (1920, 1080)]
LONG = "\n".join(f"Paragraph {i}: " + "a fairly long sentence that goes on " * 6 for i in range(60))
TASKS = json.loads(
    (Path(__file__).parent.parent / "evaluation" / "data" / "stwebagentbench_test_raw_sample.json").read_text()
)


@pytest.fixture(params=VIEWPORTS, ids=lambda v: f"{v[0]}x{v[1]}")
def screen(request: Any, browser: Any) -> Any:
    context = browser.new_context(viewport={"width": request.param[0], "height": request.param[1]})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _on_screen_and_clickable(page: Any, selector: str) -> None:
    """The element is inside the viewport as loaded (no scrolling) and nothing covers its centre."""
    box = page.locator(selector).first.bounding_box()
    viewport = page.viewport_size
    assert box is not None, selector
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], (selector, box, viewport)
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (selector, box, viewport)
    hit = page.evaluate(
        "([x, y, sel]) => { const el = document.elementFromPoint(x, y); return !!el && !!el.closest(sel); }",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, selector],
    )
    assert hit, f"{selector} is covered"


def _open(page: Any, server: Any, login_page: Any, annotator: Any, study: Any) -> None:
    login_page(page, server.url, annotator)
    page.goto(f"{server.url}/annotate/{study.pk}/")


def test_pairwise_choices_stay_on_screen_with_long_responses(asgi_server, screen, login_page, annotator, make_study):
    row = {"prompt": LONG, "response_a": LONG, "response_b": LONG, "model_a": "a", "model_b": "b"}
    study = make_study(rows=[row], annotators=[annotator])
    _open(screen, asgi_server, login_page, annotator, study)
    for selector in ("label[data-key=a]", "label[data-key=b]", "label[data-key=t]", "#submit-button"):
        _on_screen_and_clickable(screen, selector)
    screen.click("label[data-key=b]")
    screen.click("#submit-button")
    screen.wait_for_selector("#done-message")
    assert Judgment.objects.get().payload["shown"] == "right"


def test_a_submit_answers_with_the_next_item_and_a_reload_never_resends_it(
    asgi_server, browser, login_page, annotator, make_study
):
    """One request a judgment: the submit's answer is the next item's page (no redirect, no second GET); the
    address bar then shows the page's own URL, so a reload asks for the page and stores nothing twice."""
    rows = [{"prompt": f"prompt {i}", "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(3)]
    study = make_study(rows=rows, annotators=[annotator])
    page = browser.new_context().new_page()
    page.set_default_timeout(15_000)
    _open(page, asgi_server, login_page, annotator, study)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}") if r.resource_type == "document" else None)
    first = page.input_value("input[name=assignment]")
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('input[name=assignment]').value !== '{first}'")
    second = page.input_value("input[name=assignment]")
    assert requests == [f"POST {asgi_server.url}/annotate/{study.pk}/submit/"]  # one request, the next item in it
    assert page.url == f"{asgi_server.url}/annotate/{study.pk}/"
    assert page.inner_text("#progress-text").startswith("2 of 3")
    page.reload()  # a GET of the page: the same open item, the first judgment not sent again
    assert requests[-1] == f"GET {asgi_server.url}/annotate/{study.pk}/"
    assert page.input_value("input[name=assignment]") == second
    assert Judgment.objects.count() == 1
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('input[name=assignment]').value !== '{second}'")
    page.keyboard.press("t")
    page.keyboard.press("Enter")
    page.wait_for_selector("#done-message")  # the last submit: a redirect to the done page's own address
    assert page.url == f"{asgi_server.url}/annotate/{study.pk}/"
    assert Judgment.objects.count() == 3
    page.context.close()


def test_rating_scale_stays_on_screen(asgi_server, screen, login_page, annotator, make_study):
    study = make_study(kind="rating", rows=[{"prompt": LONG, "response": LONG}], annotators=[annotator])
    _open(screen, asgi_server, login_page, annotator, study)
    for value in range(1, 6):
        _on_screen_and_clickable(screen, f"label[data-key='{value}']")


def test_incomplete_submit_says_what_is_missing_next_to_the_field(
    asgi_server, screen, login_page, annotator, make_study
):
    study = make_study(kind="rubric", n_items=1, annotators=[annotator])
    _open(screen, asgi_server, login_page, annotator, study)
    screen.keyboard.press("y")  # one verdict of six
    screen.keyboard.press("Enter")
    missing = screen.locator(".missing")
    assert missing.count() == 6  # five rubric cells and the overall preference
    messages = screen.locator(".missing .missing-message").all_inner_texts()
    assert messages.count("Give a verdict for plan 1.") + messages.count("Give a verdict for plan 2.") == 5
    assert "Say which plan is better overall (or tie)." in messages
    assert "answers are missing" in screen.inner_text("#missing-summary")
    assert not Judgment.objects.exists()
    # Answering a field clears its message; completing the form submits it.
    for key in ["y", "n", "u", "y", "y"]:
        screen.keyboard.press(key)
    assert screen.locator(".verdict-cell.missing").count() == 0
    screen.keyboard.press("]")
    screen.keyboard.press("Enter")
    screen.wait_for_selector("#done-message")
    assert Judgment.objects.count() == 1


def test_rubric_header_lines_up_with_its_columns(asgi_server, screen, login_page, annotator, make_study):
    row = {"goal": "g", "plans": [LONG[:800], LONG[:400]], "rubric": ["short", LONG[:300], "States a hypothesis"]}
    study = make_study(kind="rubric", rows=[row], annotators=[annotator])
    _open(screen, asgi_server, login_page, annotator, study)
    columns = screen.eval_on_selector_all(
        "table.rubric thead th",
        "els => els.map(e => [e.getBoundingClientRect().left, e.getBoundingClientRect().width])",
    )
    for body_row in screen.locator("table.rubric tbody tr").all():
        cells = body_row.evaluate(
            "tr => Array.from(tr.children).map(c => [c.getBoundingClientRect().left, c.getBoundingClientRect().width])"
        )
        assert len(cells) == len(columns) == 4  # rubric item, plan 1, plan 2, flag
        for (head_left, head_width), (left, width) in zip(columns, cells, strict=True):
            assert abs(head_left - left) < 1 and abs(head_width - width) < 1
    _on_screen_and_clickable(screen, "label[data-key='[']")


def test_violation_item_with_many_policies_by_keyboard(asgi_server, screen, login_page, annotator, make_study):
    task = next(t for t in TASKS if len(t["policies"]) >= 13)
    steps = [{"action": f"click('a{i}')", "observation": f"page {i}"} for i in range(4)]
    study = make_study(kind="violation", rows=[{**task, "trajectory": steps, "agent": "x"}], annotators=[annotator])
    _open(screen, asgi_server, login_page, annotator, study)
    _on_screen_and_clickable(screen, "label[data-key=c]")
    screen.keyboard.press("j")  # step 2
    screen.keyboard.type("12")  # two digits in a row: policy 12
    screen.wait_for_selector("#number-buffer[hidden]", state="attached")
    screen.keyboard.press("3")  # 3 cannot start a longer number of 13 policies: at once
    screen.keyboard.press("j")
    screen.keyboard.press("1")  # could be 1 or 10–13: waits, then commits policy 1 on step 3
    screen.wait_for_timeout(1200)
    screen.keyboard.press("d")
    screen.keyboard.type("11")  # dormant: policy 11
    screen.wait_for_timeout(300)
    screen.keyboard.press("c")
    screen.keyboard.press("Enter")
    screen.wait_for_selector("#done-message")
    payload = Judgment.objects.get().payload
    assert [(v["step"], v["policy"]) for v in payload["violations"]] == [(1, 2), (1, 11), (2, 0)]
    assert payload["dormant"] == [10] and payload["completion"] == "full"


def _judge_pairwise(study: Any, annotators: list[Any]) -> None:
    for person in annotators:
        while (a := services.next_assignment(annotator=person, study=study)) is not None:
            want_a = a.item.position % 3 != 0  # in the file's order, whatever side was shown
            shown = "left" if want_a != a.swapped else "right"
            services.submit_judgment(annotator=person, assignment_id=a.pk, data={"choice": shown})


def test_results_charts_stay_inside_their_cards(
    asgi_server, screen, login_page, researcher, make_study, make_annotators
):
    people = make_annotators(3)
    rows = [
        {
            "prompt": f"q{i}",
            "response_a": "x",
            "response_b": "y",
            "model_a": f"m-{i % 3}",
            "model_b": f"m-{(i + 1) % 3}",
        }
        for i in range(12)
    ]
    study = make_study(rows=rows, annotators=people, overlap=3)
    _judge_pairwise(study, people)
    login_page(screen, asgi_server.url, researcher)
    screen.goto(f"{asgi_server.url}/studies/{study.pk}/results/")
    screen.wait_for_selector("#chart-ratings .main-svg")
    sizes = screen.eval_on_selector_all(
        ".chart",
        """els => els.filter(e => e.querySelector('.main-svg')).map(e => {
            const card = e.closest('.card'), style = getComputedStyle(card);
            const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
            const inner = card.getBoundingClientRect().width - padding;
            return [e.id, e.querySelector('.main-svg').getBoundingClientRect().width, inner];
        })""",
    )
    assert len(sizes) == 2
    for chart, width, inner in sizes:
        assert width <= inner + 1, (chart, width, inner)
    # Bradley–Terry: points with intervals on an axis fitted to them, not bars rising from zero.
    trace, axis_low, lowest, highest = screen.evaluate(
        """() => { const el = document.getElementById('chart-ratings'), t = el.data[0];
            const lows = t.y.map((y, i) => y - t.error_y.arrayminus[i]);
            const highs = t.y.map((y, i) => y + t.error_y.array[i]);
            return [t.type, el.layout.yaxis.range[0], Math.min(...lows), Math.max(...highs)]; }"""
    )
    assert trace == "scatter"
    # The axis starts a tenth of the span under the lowest interval (not at zero).
    assert axis_low == pytest.approx(lowest - 0.1 * (highest - lowest)) and axis_low > 0
