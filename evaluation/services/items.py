"""Items one at a time: added by hand (or by code that samples a model into a study), edited, deleted; display HTML."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import F, Max

from evaluation import rendering
from evaluation.importers import ParsedItem
from evaluation.models import Item, Study
from evaluation.services.locking import write_transaction


def add_items(*, study: Study, items: list[ParsedItem]) -> int:
    """Store parsed items at the end of the study's queue, in one transaction; the number stored."""
    # Markdown is rendered (and sanitised) here, once per item, instead of on every page that shows it.
    rendered = [rendering.render_item(kind=study.kind, payload=p.payload) for p in items]
    with write_transaction():
        return _add_items(study=study, items=items, rendered=rendered)


def _add_items(*, study: Study, items: list[ParsedItem], rendered: list[dict[str, Any]]) -> int:
    # Lock the study so two uploads at once do not interleave positions.
    locked = Study.objects.select_for_update().get(pk=study.pk)
    start = (Item.objects.filter(study=locked).aggregate(m=Max("position"))["m"] or 0) + 1
    rows = [
        Item(
            study=locked,
            position=start + i,
            external_id=p.external_id[:200],
            payload=p.payload,
            rendered=html,
            is_gold=p.is_gold,
            expected=p.expected,
            waiting=p.waiting,
            overlap=0 if p.waiting else locked.overlap,
        )
        for i, (p, html) in enumerate(zip(items, rendered, strict=True))
    ]
    Item.objects.bulk_create(rows, batch_size=1000)
    Study.objects.filter(pk=locked.pk).update(item_count=F("item_count") + len(rows))
    if connection.vendor == "postgresql" and len(rows) >= 1000:
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Item._meta.db_table}")
    study.item_count = locked.item_count + len(rows)
    return len(rows)


def refresh_rendered(*, item: Item, kind: str) -> dict[str, Any]:
    """The item's display HTML; a stored rendering that is stale (older renderer, changed payload) is redone."""
    if not rendering.is_current(payload=item.payload, rendered=item.rendered):
        item.rendered = rendering.render_item(kind=kind, payload=item.payload)
        Item.objects.filter(pk=item.pk).update(rendered=item.rendered)
    return rendering.item_html(kind=kind, payload=item.payload, rendered=item.rendered)
