"""Django admin for users and their roles."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from arbiter.accounts.models import User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):  # type: ignore[type-arg]  # generic only in the stubs
    list_display = ("username", "email", "role", "is_active", "last_login")
    list_filter = ("role", "is_active")
    fieldsets = (*DjangoUserAdmin.fieldsets, ("Role", {"fields": ("role",)}))  # type: ignore[misc]
    add_fieldsets = (*DjangoUserAdmin.add_fieldsets, ("Role", {"fields": ("role",)}))
