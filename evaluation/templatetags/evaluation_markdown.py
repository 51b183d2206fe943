"""Template filters for untrusted text: `{{ text|markdown }}` renders sanitised markdown (researchers' instructions);
`{{ text|study_text:study.text_format }}` renders item text in the study's format (plain text by default)."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from evaluation.rendering import render_value
from evaluation.stats import DIMENSION_LABELS

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(value: Any) -> SafeString:
    """Markdown → HTML through markdown-it (raw HTML off) and nh3; chat messages render one block each."""
    return mark_safe(render_value(value))  # noqa: S308 - nh3-sanitised


@register.filter(name="study_text")
def study_text(value: Any, text_format: str) -> SafeString:
    """Item text as annotators see it: escaped plain text (every character kept), or sanitised markdown."""
    return mark_safe(render_value(value, text_format))  # noqa: S308 - escaped, or nh3-sanitised


@register.filter(name="errors_for")
def errors_for(errors: Any, name: str) -> list[str]:
    """A refused form's messages for one field, by the field's (computed) name."""
    if not errors:
        return []
    found = errors.get(name, [])
    return list(found)


@register.filter(name="percent")
def percent(value: float | None, places: int = 0) -> str:
    return "—" if value is None else f"{100 * value:.{places}f}%"


@register.filter(name="num")
def num(value: float | None, places: int = 3) -> str:
    return "—" if value is None else f"{value:.{places}f}"


@register.filter(name="dimension_label")
def dimension_label(category: str) -> str:
    """ST-WebAgentBench's policy_category spelled for people."""
    return DIMENSION_LABELS.get(category, category)
