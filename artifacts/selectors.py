"""Reads of the artifact store's records: which artifacts a user may read, and the one a URI names."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from artifacts import uris
from artifacts.models import Artifact


def readable_artifacts(*, user: Any) -> QuerySet[Artifact]:
    """Artifacts `user` may read: their own, those of runs they can see, those of studies shared with them."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_researcher", False):
        return Artifact.objects.none()
    if user.is_admin_role:
        return Artifact.objects.all()
    return Artifact.objects.filter(
        Q(owner=user) | Q(run__owner=user) | Q(run__shared=True) | Q(study__owner=user) | Q(study__shared_with=user)
    ).distinct()


def artifact_covering(*, user: Any, uri: uris.Uri) -> Artifact | None:
    """The readable artifact whose URI is `uri` or a folder above it (the nearest), else None."""
    candidates = uri.ancestors()
    found = {a.uri: a for a in readable_artifacts(user=user).filter(uri__in=candidates)}
    for candidate in candidates:  # nearest first
        if candidate in found:
            return found[candidate]
    return None
