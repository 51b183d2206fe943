"""Sanitised markdown: code blocks survive, scripts and event handlers do not."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from evaluation.rendering import ALLOWED_TAGS, RENDER_VERSION, item_html, render_item, render_markdown, render_value

pytestmark = pytest.mark.sqlite  # no database: runs in both suites


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


PAYLOADS = [
    "<script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss=1">',
    "[click](javascript:window.__xss=1)",
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)>",
    "<iframe src=//evil></iframe>",
    '<div style="background:url(javascript:alert(1))">x</div>',
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_is_inert(payload: str) -> None:
    # Escaped text that merely reads "onerror" is harmless; what matters is the parsed DOM.
    parser = _Collect()
    parser.feed(render_markdown(payload))
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS
        for name, value in attrs:
            assert not name.startswith("on") and name != "style"
            assert "javascript:" not in (value or "").lower()


def test_code_block_keeps_language_class_and_escapes_content() -> None:
    html = render_markdown("```python\nprint('<b>')\n```")
    assert '<pre><code class="language-python">' in html
    assert "&lt;b&gt;" in html


def test_links_get_safe_rel() -> None:
    html = render_markdown("[docs](https://example.org)")
    assert 'href="https://example.org"' in html
    assert "noopener" in html


def test_markdown_basics() -> None:
    assert "<strong>bold</strong>" in render_markdown("**bold**")
    assert render_markdown(None) == ""


def test_transcript_renders_one_block_per_message_and_escapes_the_role() -> None:
    html = render_value([{"role": 'user"><script>alert(1)</script>', "content": "**hi**"}, {"role": "assistant"}])
    assert html.count('<div class="msg-role">') == 2 and "<strong>hi</strong>" in html
    assert "<script" not in html


def test_item_html_uses_stored_html_only_while_it_matches_the_payload() -> None:
    payload = {"prompt": "p", "response_a": "**a**", "response_b": "b"}
    stored = render_item(kind="pairwise", payload=payload)
    assert item_html(kind="pairwise", payload=payload, rendered=stored)["response_a"] == stored["response_a"]
    changed = {**payload, "response_a": "_new_"}
    assert item_html(kind="pairwise", payload=changed, rendered=stored)["response_a"] == "<p><em>new</em></p>\n"
    older = {**stored, "v": RENDER_VERSION - 1, "response_a": "<p>stale</p>"}
    assert "stale" not in item_html(kind="pairwise", payload=payload, rendered=older)["response_a"]


def test_stored_html_is_sanitised_again_on_display() -> None:
    payload = {"prompt": "p", "response_a": "a", "response_b": "b"}
    tampered = {
        **render_item(kind="pairwise", payload=payload),
        "response_a": '<p onclick="x()">a</p><script>1</script>',
    }
    assert item_html(kind="pairwise", payload=payload, rendered=tampered)["response_a"] == "<p>a</p>"


# --------------------------------------------------------------------------- plain text


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


TRICKY = [
    "****-****-****-1234",
    "sh*t … c*ck and **not bold** and _not italic_ and __dunder__",
    r"C:\Users\x\new \n \\ \* \_",
    "<b>bold?</b> <script>alert(1)</script> &amp; &lt; \"quotes\" 'single'",
    "```python\nprint('<b>')\n```",
    "  leading spaces\n\ttab\n\n\ntrailing  ",
    "# not a heading\n1. not a list\n> not a quote",
    "line\r\nwindows\rmac",
]


@pytest.mark.parametrize("text", TRICKY)
def test_plain_text_keeps_every_character_and_no_markup(text: str) -> None:
    html = render_value(text, "plain")
    parser = _Text()
    parser.feed(html)
    assert "".join(parser.text) == text
    assert parser.tags == ["div"]


def test_plain_conversation_is_one_bubble_per_turn_by_role() -> None:
    turns = [{"role": "user", "content": "**hi**"}, {"role": 'assistant"><script>', "content": "<i>x</i>"}]
    html = render_value(turns, "plain")
    assert html.count('class="msg msg-user"') == 1 and 'class="msg msg-assistantscript"' in html
    assert "<script" not in html and "**hi**" in html and "&lt;i&gt;x&lt;/i&gt;" in html


def test_plain_items_ignore_stored_html() -> None:
    payload = {"prompt": "p", "response_a": "**a**", "response_b": "b"}
    tampered = {**render_item(kind="pairwise", payload=payload), "response_a": "<script>1</script>"}
    html = item_html(kind="pairwise", payload=payload, rendered=tampered, text_format="plain")
    assert html["response_a"] == '<div class="plain" dir="auto">**a**</div>'
    assert render_item(kind="pairwise", payload=payload, text_format="plain") == {}


def test_markdown_html_made_for_another_format_is_redone() -> None:
    payload = {"prompt": "p", "response_a": "**a**", "response_b": "b"}
    stored = {**render_item(kind="pairwise", payload=payload), "fmt": "plain", "response_a": "<p>stale</p>"}
    assert "stale" not in item_html(kind="pairwise", payload=payload, rendered=stored)["response_a"]
