"""A ModelAdmin mixin for objects whose delete belongs to a service: Django admin deletes as the object's page does.

Admin's own delete would remove the row and cascade, skipping what the service checks (something depends on
the object; a run still active) and does after the commit (a run's files leave the artifact store). With this
mixin, what the service would refuse is listed on admin's "cannot delete" page (its `protected` list, so admin
never calls delete), and a delete that proceeds, single or bulk, goes through the service, all or nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from arbiter import dependants

if TYPE_CHECKING:
    _Admin = admin.ModelAdmin[Any]
else:
    _Admin = object


class ServiceDeletes(_Admin):
    def delete_through_service(self, obj: Any, user: Any) -> None:
        raise NotImplementedError

    def refusals(self, obj: Any, user: Any) -> list[str]:
        """Why the service would refuse to delete `obj`, beyond what depends on it (e.g. a run still active)."""
        return []

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # The finders name what a PROTECT foreign key guards (a run that trained on an export, not its bare link
        # row), so for an object they explain, Django's own list of its protected rows would say it twice. For an
        # object they find nothing for, that list is kept: PROTECT stays the last word.
        explained: list[str] = []
        unexplained: list[Any] = []
        for obj in objs:
            lines = list(self.refusals(obj, request.user))
            name = f"{obj._meta.verbose_name.capitalize()} #{obj.pk}"
            for found in dependants.dependants_of(obj, user=request.user):
                lines.append(f"{name} is needed by {found.label} ({found.reason}).")
            explained.extend(lines)
            if not lines:
                unexplained.append(obj)
        if not explained:
            return deleted, counts, perms_needed, protected
        if unexplained:
            explained.extend(super().get_deleted_objects(unexplained, request)[3])
        return deleted, counts, perms_needed, explained

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        self.delete_queryset(request, [obj])  # type: ignore[arg-type]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        # All or nothing; a refusal that appeared after the confirmation page (a run started again, a new
        # dependant) is a 403 naming it, with nothing deleted, not a 500 after half the selection went.
        try:
            with transaction.atomic():
                for obj in queryset:
                    self.delete_through_service(obj, request.user)
        except ValidationError as exc:
            raise PermissionDenied(" ".join(exc.messages)) from None
