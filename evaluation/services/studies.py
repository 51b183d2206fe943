"""Create and edit studies."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from arbiter.accounts.models import Role, User
from evaluation.models import Item, Study, StudyKind, TextFormat
from evaluation.services.locking import write_transaction


@transaction.atomic
def create_study(
    *,
    owner: User,
    name: str,
    kind: str,
    instructions: str = "",
    overlap: int = 1,
    lease_seconds: int = 900,
    accuracy_threshold: float = 0.7,
    scale_labels: list[str] | None = None,
    annotators: list[User] | None = None,
    shared_with: list[User] | None = None,
    text_format: str = TextFormat.PLAIN,
) -> Study:
    if kind not in StudyKind.values:
        raise ValidationError({"kind": "Unknown study kind."})
    if text_format not in TextFormat.values:
        raise ValidationError({"text_format": "Choose plain text or Markdown."})
    study = Study.objects.create(
        owner=owner,
        name=name,
        kind=kind,
        instructions=instructions,
        overlap=overlap,
        lease_seconds=lease_seconds,
        accuracy_threshold=accuracy_threshold,
        scale_labels=scale_labels or [],
        text_format=text_format,
    )
    if annotators:
        study.annotators.set(annotators)
    if shared_with:
        study.shared_with.set(shared_with)
    return study


def update_study(
    *,
    study: Study,
    name: str,
    instructions: str,
    overlap: int,
    lease_seconds: int,
    accuracy_threshold: float,
    scale_labels: list[str],
    annotators: list[User],
    shared_with: list[User],
    text_format: str | None = None,
) -> Study:
    """Edit a study. Overlap may not drop below what an item already holds: those judgments exist.

    Changing the text format changes how every item is shown from the next page on (markdown HTML is
    made again when first shown: it is stamped with the format it was made for)."""
    if text_format is not None and text_format not in TextFormat.values:
        raise ValidationError({"text_format": "Choose plain text or Markdown."})
    with write_transaction():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if overlap != locked.overlap:
            held = Item.objects.filter(study=locked).aggregate(m=Max("claimed"))["m"] or 0
            if overlap < held:
                raise ValidationError(
                    {"overlap": f"Some items already have {held} judgments or leases; overlap >= {held}."}
                )
            # Waiting items keep overlap 0 (unserved) until their trajectory arrives.
            Item.objects.filter(study=locked, waiting=False).update(overlap=overlap)
        locked.name, locked.instructions, locked.overlap = name, instructions, overlap
        locked.lease_seconds, locked.accuracy_threshold, locked.scale_labels = (
            lease_seconds,
            accuracy_threshold,
            scale_labels,
        )
        if text_format is not None:
            locked.text_format = text_format
        locked.save()
        locked.annotators.set(annotators)
        locked.shared_with.set(shared_with)
        return locked


@transaction.atomic
def change_annotators(*, study: Study, add: list[User], remove: list[User]) -> list[str]:
    """Assign annotators to a study and take others off it; their judgments stay. Usernames assigned after."""
    for user in add:
        if user.role != Role.ANNOTATOR:
            raise ValidationError({"add": f"{user.username} is not an annotator."})
    if add:
        study.annotators.add(*add)
    if remove:
        study.annotators.remove(*remove)
    return sorted(study.annotators.values_list("username", flat=True))
