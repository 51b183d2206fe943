"""A researcher's housekeeping of studies: rename, tag, archive, delete (refused while anything depends on it)."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from arbiter import dependants
from arbiter.accounts.models import User
from arbiter.dependants import Dependant
from arbiter.labels import clean_name, clean_tags
from evaluation.models import Study, StudyTag


@transaction.atomic
def edit_study_labels(*, study: Study, name: str, tags: Iterable[str]) -> Study:
    """Rename a study and replace its tags (the caller has checked the user may change it)."""
    study.name = clean_name(name)
    wanted = clean_tags(tags)
    study.save(update_fields=["name"])
    StudyTag.objects.filter(study=study).exclude(name__in=wanted).delete()
    StudyTag.objects.bulk_create([StudyTag(study=study, name=n) for n in wanted], ignore_conflicts=True)
    return study


def set_study_archived(*, study: Study, archived: bool) -> Study:
    """Archive (off the study list and annotators' queues, nothing deleted) or bring back."""
    study.archived_at = timezone.now() if archived else None
    study.save(update_fields=["archived_at"])
    return study


def dependants_of_study(*, study: Study, user: User) -> list[Dependant]:
    return dependants.dependants_of(study, user=user)


def delete_study(*, study: Study, by: User) -> None:
    """Delete a study with its items, judgments and exports, unless a run trained on one of its exports."""
    dependants.delete_unless_needed(study, what=f"Study #{study.pk}", user=by)
