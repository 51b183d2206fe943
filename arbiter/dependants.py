"""Refusing deletes: what depends on a run or a study, asked of every app that may know (apps register finders).

Training and studies may not import the loop app that joins them (an import-linter contract), yet the loop's
rows are what most often depend on a run or a study. So each app registers, in its AppConfig.ready, a finder
for the models it knows dependants of, and a delete asks all of them before it touches a row. Foreign keys
with PROTECT stay the last word: a ProtectedError is still turned into the same clear refusal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models.deletion import ProtectedError, RestrictedError


@dataclass(frozen=True)
class Dependant:
    """Something that needs the object to stay: what it is, why, and its page when the user may open it."""

    label: str
    reason: str
    url: str = ""


Finder = Callable[[Any, Any], list[Dependant]]  # (object, user deleting it) -> dependants
_FINDERS: dict[str, list[Finder]] = defaultdict(list)
MAX_LISTED = 20


class HasDependants(ValidationError):
    """Delete refused; `dependants` is the whole list, the message names the first MAX_LISTED."""

    def __init__(self, what: str, dependants: list[Dependant]) -> None:
        self.dependants = dependants
        listed = "; ".join(f"{d.label} ({d.reason})" for d in dependants[:MAX_LISTED])
        more = f"; and {len(dependants) - MAX_LISTED} more" if len(dependants) > MAX_LISTED else ""
        super().__init__(f"{what} cannot be deleted while other things depend on it: {listed}{more}.")


def register(model_label: str, finder: Finder) -> None:
    """`model_label` as Django spells it ("training.Run"); called from an AppConfig.ready."""
    if finder not in _FINDERS[model_label]:
        _FINDERS[model_label].append(finder)


def dependants_of(obj: models.Model, *, user: Any) -> list[Dependant]:
    found: list[Dependant] = []
    for finder in _FINDERS.get(obj._meta.label, []):
        found.extend(finder(obj, user))
    return found


def delete_unless_needed(obj: models.Model, *, what: str, user: Any) -> None:
    """Delete `obj` and what cascades from it, or raise HasDependants naming what needs it."""
    found = dependants_of(obj, user=user)
    if found:
        raise HasDependants(what, found)
    try:
        with transaction.atomic():
            obj.delete()
    except (ProtectedError, RestrictedError) as exc:
        blocking = list(exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects)
        found = [Dependant(f"{o._meta.verbose_name} #{o.pk}", "refers to it") for o in blocking]
        raise HasDependants(what, found) from None
