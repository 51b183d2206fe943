"""What a person sees of an item: the annotator's blinded view, and the researcher's preview of the same page.

One builder for both, so a preview is exactly what an annotator gets (same HTML, same template
partial, templates/evaluation/partials/item_body.html); only the side order differs (the preview
shows the file's order, an assignment its own random one). Model identities never enter the view.
Text is the study's format (evaluation.rendering): escaped plain text, or stored sanitised markdown.
"""

from __future__ import annotations

from typing import Any

from django.utils.safestring import mark_safe

from evaluation import services
from evaluation.conversations import flag_messages
from evaluation.models import Item, Study, StudyKind
from evaluation.stats import DIMENSION_LABELS


def item_view(*, study: Study, item: Item, swapped: bool = False) -> dict[str, Any]:
    """The template context of one item; every string of item text is escaped or sanitised HTML, marked safe."""
    payload = item.payload
    html = services.refresh_rendered(item=item, study=study)
    flags = flag_messages(payload.get("flags"))
    if study.kind == StudyKind.PAIRWISE:
        left, right = html["response_a"], html["response_b"]
        if swapped:
            left, right = right, left
        return {
            "prompt": mark_safe(html["prompt"]),  # noqa: S308 - escaped or sanitised by item_html
            "left": mark_safe(left),  # noqa: S308
            "right": mark_safe(right),  # noqa: S308
            "flags": flags,
        }
    if study.kind == StudyKind.RUBRIC:
        plans = [mark_safe(p) for p in html["plans"]]  # noqa: S308 - escaped or sanitised by item_html
        if swapped:
            plans.reverse()
        rubric = [mark_safe(r) for r in html["rubric"]]  # noqa: S308
        # One table row per rubric item, one cell per plan (in the order shown): the header lines up.
        rows = [
            {
                "index": i,
                "text": text,
                "cells": [{"name": f"v_{p}_{i}", "number": p + 1} for p in range(len(plans))],
            }
            for i, text in enumerate(rubric)
        ]
        return {
            "goal": mark_safe(html["goal"]),  # noqa: S308
            "plans": list(enumerate(plans)),
            "rubric": list(enumerate(rubric)),
            "rubric_rows": rows,
            "flags": flags,
        }
    if study.kind == StudyKind.VIOLATION:
        policies = [
            {
                "index": i,
                "number": i + 1,
                "description": mark_safe(description),  # noqa: S308 - escaped or sanitised by item_html
                "dimension": DIMENSION_LABELS.get(p["policy_category"], p["policy_category"]),
                "category": p["policy_category"],
            }
            for i, (p, description) in enumerate(zip(payload["policies"], html["policies"], strict=True))
        ]
        steps = [{"index": s, "number": s + 1, **step} for s, step in enumerate(payload.get("trajectory") or [])]
        return {
            "intent": mark_safe(html["intent"]),  # noqa: S308
            "policies": policies,
            "steps": steps,
            "flags": flags,
        }
    return {
        "prompt": mark_safe(html["prompt"]),  # noqa: S308
        "response": mark_safe(html["response"]),  # noqa: S308
        "flags": flags,
    }


def _text_of(value: Any) -> str:
    if isinstance(value, list):
        turns = [t for t in value if isinstance(t, dict)]
        users = [str(t.get("content", "")) for t in turns if t.get("role") == "user"]
        return users[-1] if users else (str(turns[-1].get("content", "")) if turns else "")
    return value if isinstance(value, str) else ""


def item_summary(*, item: Item, length: int = 200) -> str:
    """One line of an item's own text for lists (results, the item browser): never just its id."""
    for name in ("prompt", "goal", "intent"):
        text = _text_of(item.payload.get(name))
        if text.strip():
            line = " ".join(text.split())
            return line if len(line) <= length else line[: length - 1] + "…"
    return item.external_id or f"item {item.pk}"
