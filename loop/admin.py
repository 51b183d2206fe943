"""Django admin for the loop: policies, item provenance, run inputs, sampling jobs (read mostly)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from loop.models import ItemSource, Policy, RunInput, SampleJob

# ModelAdmin is generic only in django-stubs; the runtime class takes no subscript.
if TYPE_CHECKING:
    _PolicyAdmin = admin.ModelAdmin[Policy]
    _ItemSourceAdmin = admin.ModelAdmin[ItemSource]
    _RunInputAdmin = admin.ModelAdmin[RunInput]
    _SampleJobAdmin = admin.ModelAdmin[SampleJob]
else:
    _PolicyAdmin = _ItemSourceAdmin = _RunInputAdmin = _SampleJobAdmin = admin.ModelAdmin


@admin.register(Policy)
class PolicyAdmin(_PolicyAdmin):
    list_display = ["label", "kind", "run", "step", "model_path"]
    list_filter = ["kind"]
    search_fields = ["label", "model_path"]
    raw_id_fields = ["run", "checkpoint"]


@admin.register(ItemSource)
class ItemSourceAdmin(_ItemSourceAdmin):
    list_display = ["item", "side", "policy", "sample"]
    raw_id_fields = ["item", "policy"]


@admin.register(RunInput)
class RunInputAdmin(_RunInputAdmin):
    list_display = ["run", "field", "export"]
    raw_id_fields = ["run", "export"]


@admin.register(SampleJob)
class SampleJobAdmin(_SampleJobAdmin):
    list_display = ["name", "owner", "status", "study_kind", "done", "total", "created_at"]
    list_filter = ["status", "study_kind"]
    search_fields = ["name", "owner__username"]
    raw_id_fields = ["owner", "study", "prompt_study", "prompt_run"]
