"""Chromium against a real daphne server: XSS payloads stay inert; the forms work from the keyboard."""

from __future__ import annotations

import pytest

from evaluation.models import Judgment
from tests.evaluation.conftest import violation_row

pytestmark = pytest.mark.django_db(transaction=True)

XSS = (
    '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'
    '[x](javascript:window.__xss=1) <svg onload="window.__xss=1"></svg>'
)


def test_xss_in_model_output_and_instructions_is_inert(
    asgi_server, page, login_page, annotator, researcher, make_study
) -> None:
    rows = [
        {"prompt": XSS, "response_a": "```js\nalert(1)\n```\n" + XSS, "response_b": XSS, "model_a": XSS, "model_b": "b"}
    ]
    # A Markdown study: the sanitiser is what stands between the data and the page.
    study = make_study(rows=rows, annotators=[annotator], instructions=XSS, text_format="markdown")
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    assert page.locator(".response pre code").count() == 1  # code blocks survive (on whichever side)
    page.click("text=A is better")
    page.wait_for_timeout(200)
    assert page.evaluate("window.__xss") is None
    assert page.locator(".md img, .md script, .md svg").count() == 0

    # The researcher's pages render the same untrusted text (instructions, results tables).
    page.context.clear_cookies()
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/studies/{study.pk}/")
    page.wait_for_timeout(200)
    assert page.evaluate("window.__xss") is None


def test_xss_in_rubric_item_is_inert(asgi_server, page, login_page, annotator, make_study) -> None:
    rows = [{"goal": XSS, "plans": [XSS, "plan two"], "rubric": [XSS, "fine item"]}]
    study = make_study(kind="rubric", rows=rows, annotators=[annotator], text_format="markdown")
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    page.wait_for_timeout(200)
    assert page.evaluate("window.__xss") is None
    assert page.locator(".md img").count() == 0


def test_pairwise_form_by_keyboard(asgi_server, page, login_page, annotator, make_study) -> None:
    study = make_study(n_items=2, annotators=[annotator])
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    assert "1 of 2" in page.inner_text("#progress-text")
    page.keyboard.press("b")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/annotate/{study.pk}/")
    page.wait_for_selector("#progress-text:has-text('2 of 2')")
    judgment = Judgment.objects.get()
    assert judgment.payload["shown"] == "right" and judgment.payload["strength"] == 3
    assert judgment.time_ms > 0
    page.keyboard.press("s")  # skip the second item
    page.wait_for_selector("#done-message")


def test_rubric_form_by_keyboard(asgi_server, page, login_page, annotator, make_study) -> None:
    study = make_study(kind="rubric", n_items=1, annotators=[annotator])
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    # Six rows (3 rubric items × 2 plans): each answer moves to the next row.
    for key in ["y", "y", "n", "y", "u", "y"]:
        page.keyboard.press(key)
    page.keyboard.press("]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#done-message")
    verdicts = Judgment.objects.get().payload["verdicts"]
    assert sorted(v for plan in verdicts for v in plan) == sorted(["satisfied"] * 4 + ["not_satisfied", "unclear"])


def test_violation_form_by_keyboard(asgi_server, page, login_page, annotator, make_study) -> None:
    study = make_study(kind="violation", rows=[violation_row(1)], annotators=[annotator])
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    page.keyboard.press("j")  # second step
    page.keyboard.press("2")  # violates policy 2 (boundary and scope)
    page.keyboard.press("c")  # fully completed
    page.keyboard.press("Enter")
    page.wait_for_selector("#done-message")
    payload = Judgment.objects.get().payload
    assert payload["violations"] == [{"step": 1, "policy": 1, "dimension": "boundary_and_scope_limitation"}]
    assert payload["completion"] == "full"


def test_rating_form_by_keyboard(asgi_server, page, login_page, annotator, make_study) -> None:
    study = make_study(kind="rating", n_items=1, annotators=[annotator])
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    page.wait_for_selector("#done-message")
    assert Judgment.objects.get().payload["rating"] == 4


def test_study_page_shows_progress_live(
    asgi_server, page, login_page, researcher, annotator, make_study, settings
) -> None:
    from evaluation import services

    settings.EVALUATION_PROGRESS_THROTTLE_S = 0
    study = make_study(n_items=2, overlap=1, annotators=[annotator])
    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/studies/{study.pk}/")
    page.wait_for_selector("#live-dot.on")  # the socket is open
    assert page.inner_text("#progress-judgments") == "0"
    a = services.next_assignment(annotator=annotator, study=study)
    services.submit_judgment(annotator=annotator, assignment_id=a.pk, data={"choice": "left"})
    page.wait_for_selector("#progress-judgments:text-is('1')", timeout=5000)
    assert page.inner_text("#progress-percent") == "50.0"
