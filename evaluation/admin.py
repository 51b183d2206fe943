"""Django admin for studies: browse studies, items, assignments and exports; release stale leases."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from evaluation import services
from evaluation.models import Assignment, ExportJob, Item, Judgment, Study


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "owner", "overlap", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "owner__username"]
    filter_horizontal = ["annotators", "shared_with"]
    actions = ["release_expired"]

    @admin.action(description="Return expired leases to the queue")
    def release_expired(self, request: HttpRequest, queryset: QuerySet[Study]) -> None:
        released = sum(services.release_expired_leases(study_id=s.pk) for s in queryset)
        self.message_user(request, f"Released {released} expired leases.", messages.SUCCESS)


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "external_id", "is_gold", "claimed", "judgment_count", "overlap"]
    list_filter = ["is_gold"]
    search_fields = ["external_id"]
    # The counters are the queue's bookkeeping: edited only by the services.
    readonly_fields = ["claimed", "judgment_count", "overlap"]
    raw_id_fields = ["study"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
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

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "item", "annotator", "time_ms", "created_at"]
    raw_id_fields = ["assignment", "study", "item", "annotator"]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "format", "status", "version", "rows", "created_at"]
    list_filter = ["status", "format"]
    raw_id_fields = ["study", "requested_by"]
