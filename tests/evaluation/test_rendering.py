"""Sanitised markdown: code blocks survive, scripts and event handlers do not."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from evaluation.rendering import ALLOWED_TAGS, render_markdown


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
