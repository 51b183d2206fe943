"""Django admin for studies: studies, items, assignments, imports, exports, automatic verdicts; release leases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from arbiter.admin_deletes import ServiceDeletes
from evaluation import services
from evaluation.models import Assignment, AutomaticJudgment, ExportJob, ImportJob, Item, Judgment, Study
from evaluation.services import study_records

# ModelAdmin is generic only in django-stubs; the runtime class takes no subscript.
if TYPE_CHECKING:
    _StudyAdmin = admin.ModelAdmin[Study]
    _ItemAdmin = admin.ModelAdmin[Item]
    _AssignmentAdmin = admin.ModelAdmin[Assignment]
    _JudgmentAdmin = admin.ModelAdmin[Judgment]
    _ExportJobAdmin = admin.ModelAdmin[ExportJob]
    _ImportJobAdmin = admin.ModelAdmin[ImportJob]
    _AutomaticJudgmentAdmin = admin.ModelAdmin[AutomaticJudgment]
else:
    _StudyAdmin = _ItemAdmin = _AssignmentAdmin = _JudgmentAdmin = _ExportJobAdmin = admin.ModelAdmin
    _ImportJobAdmin = _AutomaticJudgmentAdmin = admin.ModelAdmin


@admin.register(Study)
class StudyAdmin(ServiceDeletes, _StudyAdmin):
    list_display = ["name", "kind", "owner", "overlap", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "owner__username"]
    filter_horizontal = ["annotators", "shared_with"]
    actions = ["release_expired"]

    # Delete as the study page deletes (study_records.delete_study; arbiter.admin_deletes).
    def delete_through_service(self, obj: Study, user: Any) -> None:
        study_records.delete_study(study=obj, by=user)

    @admin.action(description="Return expired leases to the queue")
    def release_expired(self, request: HttpRequest, queryset: QuerySet[Study]) -> None:
        released = sum(services.release_expired_leases(study_id=s.pk) for s in queryset)
        self.message_user(request, f"Released {released} expired leases.", messages.SUCCESS)


@admin.register(Item)
class ItemAdmin(_ItemAdmin):
    list_display = ["id", "study", "external_id", "is_gold", "claimed", "judgment_count", "overlap"]
    list_filter = ["is_gold"]
    search_fields = ["external_id"]
    # The counters are the queue's bookkeeping: edited only by the services.
    readonly_fields = ["claimed", "judgment_count", "overlap"]
    raw_id_fields = ["study"]


@admin.register(Assignment)
class AssignmentAdmin(_AssignmentAdmin):
    list_display = [
        "id",
        "study",
        "item",
        "annotator",
        "leased_at",
        "lease_expires_at",
        "completed_at",
        "released_at",
        "skipped",
        "flagged",
    ]
    list_filter = ["skipped", "flagged"]
    raw_id_fields = ["study", "item", "annotator"]

    def has_change_permission(self, request: HttpRequest, obj: Assignment | None = None) -> bool:
        return False


@admin.register(Judgment)
class JudgmentAdmin(_JudgmentAdmin):
    list_display = ["id", "study", "item", "annotator", "time_ms", "created_at"]
    raw_id_fields = ["assignment", "study", "item", "annotator"]

    def has_change_permission(self, request: HttpRequest, obj: Judgment | None = None) -> bool:
        return False


@admin.register(ExportJob)
class ExportJobAdmin(_ExportJobAdmin):
    list_display = ["id", "study", "format", "status", "version", "rows", "created_at"]
    list_filter = ["status", "format"]
    raw_id_fields = ["study", "requested_by"]


@admin.register(ImportJob)
class ImportJobAdmin(_ImportJobAdmin):
    list_display = ["id", "study", "filename", "container", "status", "rows_read", "created_items", "created_at"]
    list_filter = ["status"]
    raw_id_fields = ["study", "requested_by"]

    def has_change_permission(self, request: HttpRequest, obj: ImportJob | None = None) -> bool:
        return False


@admin.register(AutomaticJudgment)
class AutomaticJudgmentAdmin(_AutomaticJudgmentAdmin):
    list_display = ["id", "study", "item", "judge", "created_at"]
    raw_id_fields = ["study", "item"]

    def has_change_permission(self, request: HttpRequest, obj: AutomaticJudgment | None = None) -> bool:
        return False
