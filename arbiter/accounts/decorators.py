"""Role checks for views: anonymous users go to login, the wrong role gets 403."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase

from arbiter.accounts.models import Role

View = TypeVar("View", bound=Callable[..., HttpResponseBase])


def user_has_role(user: Any, roles: tuple[str, ...]) -> bool:
    """Admins pass every role check; researchers pass RESEARCHER; annotators pass ANNOTATOR."""
    if not user.is_authenticated:
        return False
    if user.is_admin_role:
        return True
    return user.role in roles


def role_required(*roles: str) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user_has_role(request.user, roles):
                raise PermissionDenied("Your role does not allow this page.")
            return view(request, *args, **kwargs)

        wrapped.required_roles = roles  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorator


researcher_required = role_required(Role.RESEARCHER)
annotator_required = role_required(Role.ANNOTATOR)
