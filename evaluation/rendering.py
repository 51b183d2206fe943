"""Render untrusted text (model outputs, rubric items, instructions) as HTML an annotator can trust.

What an annotator judges must be what the data says. Each study chooses (Study.text_format):

- plain (the default): every character escaped and kept — whitespace, asterisks, underscores,
  backslashes, markup — shown with `white-space: pre-wrap`; a conversation is one bubble per turn,
  by role. Escaping is the whole defence (nothing is parsed), and it is cheap, so plain text is
  rendered on display, never stored.
- markdown (opt-in): as below.

Markdown has two walls, because either alone has failed elsewhere (Label Studio's XSS through
task data): markdown-it with raw HTML disabled escapes any markup in the source,
then nh3 (ammonia) keeps only an allow-list of tags and attributes, so an
`<img onerror>`, a `javascript:` link or a stray `<script>` cannot reach the DOM.

Items are rendered once, at import (`render_item`), and the HTML is stored on the
item: markdown parsing is most of the cost and an item is shown `overlap` times.
Stored HTML is never trusted as it stands (`item_html`): it is used only when it was
made from the item's current payload by this version of the renderer, and it goes
through the sanitiser again on every display (nh3 costs ~10 µs per answer; markdown
parsing ~100 µs). No Django here.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from html import escape
from typing import Any

import nh3
import orjson
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s",
    "blockquote", "ul", "ol", "li", "pre", "code", "table", "thead", "tbody", "tr", "th", "td", "a",
    "div",  # only for chat transcripts: <div class="msg msg-user">, see render_value
}  # fmt: skip
# No <img>: an image in a model output would fetch from anywhere, with the annotator's IP.
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "div": {"class"},
    "ol": {"start"},
    "th": {"align"},
    "td": {"align"},
}
ALLOWED_SCHEMES = {"http", "https", "mailto"}
# Bump when the parser's options or the allow-list change: HTML stored by an older version re-renders.
RENDER_VERSION = 2
PLAIN, MARKDOWN = "plain", "markdown"
_ROLE_CLASS = re.compile(r"[^a-z0-9_-]")


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # commonmark with html=False: raw HTML in the source is shown as text, never parsed.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def sanitise(html: str) -> str:
    """Keep only the allow-listed tags, attributes and URL schemes."""
    return _cleaner().clean(html) if html else ""


def render_markdown(text: str | None) -> str:
    """Markdown to safe HTML: code blocks kept (`<pre><code class="language-x">`), scripts gone."""
    if not text:
        return ""
    return sanitise(_parser().render(text))


def _escape_plain(text: str) -> str:
    # A raw carriage return would be turned into a line feed by the HTML parser: keep it as a reference.
    return escape(text, quote=True).replace("\r", "&#13;")


def render_plain(value: Any) -> str:
    """Text as it is (escaped, every character kept), or a conversation as one bubble per turn."""
    if isinstance(value, list):
        blocks = []
        for message in value:
            if isinstance(message, dict):
                role = str(message.get("role", ""))
                css = _ROLE_CLASS.sub("", role.lower()) or "other"
                blocks.append(
                    f'<div class="msg msg-{css}"><div class="msg-role">{escape(role)}</div>'
                    f'<div class="plain" dir="auto">{_escape_plain(str(message.get("content", "")))}</div></div>'
                )
        return f'<div class="turns">{"".join(blocks)}</div>'
    return f'<div class="plain" dir="auto">{_escape_plain("" if value is None else str(value))}</div>'


def render_value(value: Any, text_format: str = MARKDOWN) -> str:
    """A text field, or a chat transcript (a list of {role, content}), as safe HTML in the study's format."""
    if text_format == PLAIN:
        return render_plain(value)
    if isinstance(value, list):
        blocks = []
        for message in value:
            if isinstance(message, dict):
                role = escape(str(message.get("role", "")))
                css = _ROLE_CLASS.sub("", role.lower()) or "other"
                body = _parser().render(str(message.get("content", "")))
                blocks.append(f'<div class="msg msg-{css}"><div class="msg-role">{role}</div>{body}</div>')
        return sanitise(f'<div class="turns">{"".join(blocks)}</div>')
    return render_markdown(None if value is None else str(value))


def payload_digest(payload: dict[str, Any]) -> str:
    """A fingerprint of the item's content: stored HTML made from another payload is stale."""
    return hashlib.blake2b(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def _fields(kind: str, payload: dict[str, Any], render: Any) -> dict[str, Any]:
    html: dict[str, Any] = {}
    if kind == "pairwise":
        for name in ("prompt", "response_a", "response_b"):
            html[name] = render(payload.get(name))
    elif kind == "rating":
        html["prompt"] = render(payload.get("prompt"))
        html["response"] = render(payload.get("response"))
    elif kind == "rubric":
        html["goal"] = render(payload.get("goal"))
        html["plans"] = [render(p.get("text")) for p in payload.get("plans", [])]
        html["rubric"] = [render(r) for r in payload.get("rubric", [])]
    elif kind == "violation":
        html["intent"] = render(payload.get("intent"))
        html["policies"] = [render(p.get("description")) for p in payload.get("policies", [])]
    return html


def render_item(*, kind: str, payload: dict[str, Any], text_format: str = MARKDOWN) -> dict[str, Any]:
    """The HTML to store with an item: markdown is parsed once, at import; plain text is made on display."""
    if text_format == PLAIN:
        return {}
    html: dict[str, Any] = {"v": RENDER_VERSION, "fmt": MARKDOWN, "digest": payload_digest(payload)}
    html.update(_fields(kind, payload, render_value))
    return html


def is_current(*, payload: dict[str, Any], rendered: dict[str, Any] | None, text_format: str = MARKDOWN) -> bool:
    """True when `rendered` was made from exactly this payload, in this format, by this version of the renderer."""
    if text_format == PLAIN:
        return True  # nothing is stored for plain text
    if not rendered:
        return False
    return (
        rendered.get("v") == RENDER_VERSION
        and rendered.get("fmt") == MARKDOWN
        and rendered.get("digest") == payload_digest(payload)
    )


def item_html(
    *, kind: str, payload: dict[str, Any], rendered: dict[str, Any] | None, text_format: str = MARKDOWN
) -> dict[str, Any]:
    """The item's HTML for display: plain text escaped now; markdown from the stored rendering when current,
    else a fresh one, sanitised again either way."""
    if text_format == PLAIN:
        return _fields(kind, payload, render_plain)
    if not is_current(payload=payload, rendered=rendered):
        rendered = render_item(kind=kind, payload=payload)
    assert rendered is not None
    clean = _cleaner().clean
    return {
        key: [clean(v) for v in value] if isinstance(value, list) else clean(value)
        for key, value in rendered.items()
        if key not in ("v", "digest", "fmt")
    }
