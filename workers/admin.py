"""Admin of worker credentials (new ones come from `manage.py worker_credential NAME`: the token is shown once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from workers.models import WorkerCredential

if TYPE_CHECKING:
    _Admin = admin.ModelAdmin[WorkerCredential]
else:
    _Admin = admin.ModelAdmin


@admin.register(WorkerCredential)
class WorkerCredentialAdmin(_Admin):
    list_display = ("name", "prefix", "queues", "slots", "last_seen_at", "revoked_at")
    readonly_fields = ("token_hash", "prefix", "queues", "slots", "created_at", "last_seen_at")
