"""Render untrusted text (model outputs, rubric items, instructions) as sanitised HTML.

Two walls, because either alone has failed elsewhere (Label Studio's XSS through
task data): markdown-it with raw HTML disabled escapes any markup in the source,
then nh3 (ammonia) keeps only an allow-list of tags and attributes, so an
`<img onerror>`, a `javascript:` link or a stray `<script>` cannot reach the DOM.
No Django here.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s",
    "blockquote", "ul", "ol", "li", "pre", "code", "table", "thead", "tbody", "tr", "th", "td", "a",
}  # fmt: skip
# No <img>: an image in a model output would fetch from anywhere, with the annotator's IP.
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "ol": {"start"},
    "th": {"align"},
    "td": {"align"},
}
ALLOWED_SCHEMES = {"http", "https", "mailto"}


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # commonmark with html=False: raw HTML in the source is shown as text, never parsed.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


def render_markdown(text: str | None) -> str:
    """Markdown to safe HTML: code blocks kept (`<pre><code class="language-x">`), scripts gone."""
    if not text:
        return ""
    html = _parser().render(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
