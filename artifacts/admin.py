"""Admin of artifact records (read-mostly: the store's files are written by exports and runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from artifacts.models import Artifact

# ModelAdmin is generic only in django-stubs; the runtime class takes no subscript.
if TYPE_CHECKING:
    _ArtifactAdmin = admin.ModelAdmin[Artifact]
else:
    _ArtifactAdmin = admin.ModelAdmin


@admin.register(Artifact)
class ArtifactAdmin(_ArtifactAdmin):
    list_display = ("id", "kind", "uri", "size", "owner", "run", "study", "created_at")
    list_filter = ("kind",)
    search_fields = ("uri", "sha256")
    raw_id_fields = ("owner", "run", "study", "export")
    readonly_fields = ("created_at",)
