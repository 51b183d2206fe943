"""Study items with provenance: rows in the upload format go through the study importer (so they are normalised
and rendered exactly as uploaded items are), and each side is tied to the policy that wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from evaluation import services as study_services
from evaluation.importers import RowError, parse_jsonl
from evaluation.models import Item, Study
from loop.models import ItemSource

Sources = dict[str, list[tuple[str, int, int]]]  # row id -> [(side, policy id, sample)]


@dataclass(frozen=True)
class Added:
    created: int
    errors: list[RowError]
    error_count: int


def add_sourced_items(*, study: Study, rows: list[dict[str, Any]], sources: Sources) -> Added:
    """Add rows (each with a unique "id") to the study and record who wrote each side; call inside a transaction.

    Rows the importer refuses are left out and reported (the caller says so to the researcher).
    """
    if not rows:
        return Added(0, [], 0)
    parsed = parse_jsonl(b"\n".join(orjson.dumps(r) for r in rows), kind=study.kind)
    if parsed.items:
        study_services.add_items(study=study, items=parsed.items)
    wanted = [str(r["id"]) for r in rows]
    ids = dict(Item.objects.filter(study=study, external_id__in=wanted).values_list("external_id", "pk"))
    ItemSource.objects.bulk_create(
        [
            ItemSource(item_id=ids[rid], side=side, policy_id=policy_id, sample=sample)
            for rid, sides in sources.items()
            if rid in ids
            for side, policy_id, sample in sides
        ],
        batch_size=2000,
    )
    return Added(len(parsed.items), parsed.errors, parsed.error_count)
