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
    rendered = [rendering.render_item(kind=study.kind, payload=p.payload, text_format=study.text_format) for p in items]
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


def refresh_rendered(*, item: Item, study: Study) -> dict[str, Any]:
    """The item's display HTML in the study's format; a stored markdown rendering that is stale (older
    renderer, changed payload, made before the study switched format) is redone and stored."""
    fmt = study.text_format
    if not rendering.is_current(payload=item.payload, rendered=item.rendered, text_format=fmt):
        item.rendered = rendering.render_item(kind=study.kind, payload=item.payload, text_format=fmt)
        Item.objects.filter(pk=item.pk).update(rendered=item.rendered)
    return rendering.item_html(kind=study.kind, payload=item.payload, rendered=item.rendered, text_format=fmt)


class ItemLocked(Exception):
    """The item has judgments, or an annotator holds it: changing it would change what was judged."""


def _check_unjudged(item: Item) -> None:
    if item.judgment_count:
        raise ItemLocked(f"This item has {item.judgment_count} judgment(s); it can no longer change.")
    if item.claimed:
        raise ItemLocked("An annotator is working on this item right now; try again when the lease ends.")


def edit_item(*, study: Study, item_id: int, parsed: ParsedItem) -> Item:
    """Replace an unjudged item's content with a re-parsed row (the same parser as uploads)."""
    with write_transaction():
        item = Item.objects.select_for_update().get(pk=item_id, study=study)
        _check_unjudged(item)
        item.payload = parsed.payload
        item.rendered = rendering.render_item(kind=study.kind, payload=parsed.payload, text_format=study.text_format)
        item.is_gold, item.expected = parsed.is_gold, parsed.expected
        item.external_id = parsed.external_id[:200]
        item.waiting = parsed.waiting
        item.overlap = 0 if parsed.waiting else study.overlap
        item.save(update_fields=["payload", "rendered", "is_gold", "expected", "external_id", "waiting", "overlap"])
    return item


def delete_item(*, study: Study, item_id: int) -> None:
    """Delete an unjudged item (its skipped or released assignments go with it)."""
    with write_transaction():
        item = Item.objects.select_for_update().get(pk=item_id, study=study)
        _check_unjudged(item)
        item.delete()
        Study.objects.filter(pk=study.pk).update(item_count=F("item_count") - 1)
