"""Chromium: what an annotator sees is the data. In a plain-text study every tricky row reads exactly as its source."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

CORPUS = [
    "Card: ****-****-****-1234, PIN ****",
    "sh*t … c*ck, **not bold**, *not italic*, _under_ and __dunder__",
    "C:\\Users\\anna\\new \\n \\\\ \\* \\_ \\`",
    "<b>bold?</b> <script>window.__xss = 1</script> &amp; &lt; &#x41; \"quoted\" 'single'",
    "```python\nprint('<b>')  # a code fence\n```",
    "# not a heading\n1. not a list\n> not a quote\n- [ ] not a task\n| a | b |\n|---|---|",
    "  two leading spaces\n\ttab\n\n\nthree blank lines, two trailing spaces  ",
    "x" * 3000,
    "https://example.com/" + "a/" * 400,
    "שלום עולם, זה טקסט מימין לשמאל. مرحبا بالعالم",
    "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 🇮🇱 ❤️ e\u0301 ﬁ \u200b zero-width",
    "[link](javascript:window.__xss=1) ![img](x) <img src=x onerror=window.__xss=1>",
]


def _turns(texts: list[str]) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def _read_plain_blocks(page: Any, selector: str) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        selector,
        """els => els.map(el => ({
            text: el.textContent,
            inner: el.innerText,
            overflow: el.scrollWidth - el.clientWidth,
            direction: getComputedStyle(el).direction,
            tags: Array.from(el.querySelectorAll('*')).map(c => c.tagName),
        }))""",
    )


@pytest.mark.parametrize("viewport", [(1280, 800), (1920, 1080)])
def test_plain_text_reads_exactly_as_the_source(
    asgi_server, browser, login_page, annotator, make_study, viewport
) -> None:
    prompt = _turns(CORPUS[:-2])
    row = {"prompt": prompt, "response_a": CORPUS[-2], "response_b": CORPUS[-1], "model_a": "m1", "model_b": "m2"}
    study = make_study(rows=[row], annotators=[annotator])
    assert study.text_format == "plain"  # the default
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    try:
        login_page(page, asgi_server.url, annotator)
        page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
        turns = _read_plain_blocks(page, ".prompt .msg .plain")
        assert [t["text"] for t in turns] == CORPUS[:-2]
        assert [t["inner"] for t in turns] == CORPUS[:-2]  # what is rendered on screen, whitespace and all
        roles = page.eval_on_selector_all(".prompt .msg", "els => els.map(e => e.className)")
        assert roles == [f"msg msg-{t['role']}" for t in prompt]  # bubbles by role
        responses = _read_plain_blocks(page, ".response .plain")
        assert sorted(r["inner"] for r in responses) == sorted(CORPUS[-2:])
        for block in turns + responses:
            assert block["tags"] == []  # no markup was made from the text
            assert block["overflow"] <= 1  # very long lines wrap inside their card
        rtl = next(t for t in turns if t["text"].startswith("שלום"))
        assert rtl["direction"] == "rtl"
        assert page.evaluate("window.__xss") is None
    finally:
        context.close()


def test_carriage_returns_survive(asgi_server, page, login_page, annotator, make_study) -> None:
    text = "line one\r\nline two\rline three"
    study = make_study(kind="rating", rows=[{"prompt": text, "response": "ok"}], annotators=[annotator])
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    assert page.eval_on_selector(".prompt .plain", "el => el.textContent") == text


def test_rubric_items_and_plans_are_plain_text(asgi_server, page, login_page, annotator, make_study) -> None:
    rows = [{"goal": CORPUS[0], "plans": [CORPUS[1], CORPUS[2]], "rubric": CORPUS[3:7]}]
    study = make_study(kind="rubric", rows=rows, annotators=[annotator])
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    rubric = page.eval_on_selector_all(".rubric-text .plain", "els => els.map(e => e.innerText)")
    assert rubric == CORPUS[3:7]
    plans = page.eval_on_selector_all(".response .plain", "els => els.map(e => e.innerText)")
    assert sorted(plans) == sorted(CORPUS[1:3])


def test_markdown_study_renders_sanitised_markdown(asgi_server, page, login_page, annotator, make_study) -> None:
    row = {"prompt": "p", "response_a": "**bold** and `code`", "response_b": "_it_", "model_a": "a", "model_b": "b"}
    study = make_study(rows=[row], annotators=[annotator], text_format="markdown")
    login_page(page, asgi_server.url, annotator)
    page.goto(f"{asgi_server.url}/annotate/{study.pk}/")
    assert page.locator(".response strong").count() == 1 and page.locator(".response em").count() == 1
