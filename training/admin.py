"""Django admin for runs and API keys; actions go through the services like every other caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from arbiter.admin_deletes import ServiceDeletes
from training.http import AuthedHttpRequest
from training.models import ApiToken, Checkpoint, Run, RunTransition
from training.services import run_records, runs

# ModelAdmin and TabularInline are generic only in django-stubs; the runtime classes take no subscript.
if TYPE_CHECKING:
    _TransitionInline = admin.TabularInline[RunTransition, Run]
    _CheckpointInline = admin.TabularInline[Checkpoint, Run]
    _RunAdmin = admin.ModelAdmin[Run]
    _ApiTokenAdmin = admin.ModelAdmin[ApiToken]
else:
    _TransitionInline = _CheckpointInline = admin.TabularInline
    _RunAdmin = _ApiTokenAdmin = admin.ModelAdmin


class TransitionInline(_TransitionInline):
    model = RunTransition
    extra = 0
    readonly_fields = ("status", "at", "note")
    can_delete = False


class CheckpointInline(_CheckpointInline):
    model = Checkpoint
    extra = 0
    readonly_fields = ("step", "path", "created_at")
    # A checkpoint goes with its run (run_records.delete_run: its files too, and never while a run resumed
    # from it or a study sampled it); deleting the row alone would leave its files and break those links.
    can_delete = False
    max_num = 0  # and none are added by hand: the engine records them


@admin.register(Run)
class RunAdmin(ServiceDeletes, _RunAdmin):
    list_display = ("id", "name", "owner", "recipe", "queue", "status", "worker", "heartbeat_at", "created_at")
    list_filter = ("status", "recipe", "queue", "shared")
    search_fields = ("name", "owner__username", "worker")
    readonly_fields = (
        "token_hash",
        "event_seq",
        "pid",
        "pgid",
        "heartbeat_at",
        "started_at",
        "finished_at",
        "exit_code",
        "worker",
        "status",
        "cancel_requested_at",
    )
    raw_id_fields = ("owner", "parent")
    inlines = (TransitionInline, CheckpointInline)
    actions = ("cancel_runs", "retry_runs", "sweep_lost")

    # Delete as the run page deletes (training.services.run_records.delete_run; arbiter.admin_deletes).
    def delete_through_service(self, obj: Run, user: Any) -> None:
        run_records.delete_run(run=obj, by=user)

    def refusals(self, obj: Run, user: Any) -> list[str]:
        return [f"Run #{obj.id} is {obj.status}: cancel it before deleting it."] if obj.is_active else []

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: AuthedHttpRequest, queryset: QuerySet[Run]) -> None:
        for run in queryset:
            try:
                runs.cancel_run(run=run, by=request.user)
            except ValidationError as exc:
                self.message_user(request, f"#{run.id}: {' '.join(exc.messages)}", messages.WARNING)

    @admin.action(description="Retry selected runs (same config, new run)")
    def retry_runs(self, request: AuthedHttpRequest, queryset: QuerySet[Run]) -> None:
        for run in queryset:
            try:
                new = runs.retry_run(run=run, by=request.user)
                self.message_user(request, f"#{run.id} → #{new.id}")
            except ValidationError as exc:
                self.message_user(request, f"#{run.id}: {' '.join(exc.messages)}", messages.WARNING)

    @admin.action(description="Mark runs with a stopped heartbeat as lost (now)")
    def sweep_lost(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        lost = runs.mark_lost_runs()
        self.message_user(request, f"marked lost: {lost or 'none'}")


@admin.register(ApiToken)
class ApiTokenAdmin(_ApiTokenAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = ("token_hash", "prefix", "created_at", "last_used_at")
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created on the API keys page, where the plain key is shown once

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            runs.revoke_api_token(token=token)
