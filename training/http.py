"""Typed request for views behind `role_required`: the decorator has already refused anonymous users."""

from __future__ import annotations

from django.http import HttpRequest

from arbiter.accounts.models import User


class AuthedHttpRequest(HttpRequest):
    """Annotation only (never instantiated): `request.user` is a real `User`, not `User | AnonymousUser`.

    Use it in the signature of views wrapped by `role_required` / `researcher_required`, and of admin
    actions (the admin site only lets staff in), so services that take a `User` type-check without asserts.
    """

    user: User
