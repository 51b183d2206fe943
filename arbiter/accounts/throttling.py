"""Login throttling hooks for django-axes (whose address a login comes from, the page a lockout gets), and
the hourly budget of password reset e-mails."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKOUT_STATUS = 429  # Too Many Requests: what django-axes answers by default, and what the page says


def client_address(request: HttpRequest) -> str | None:
    """The address failures are counted against: the ASGI server's client address.

    No forwarding header is read here on purpose. uvicorn has already replaced the TCP peer with the
    address a trusted proxy put in X-Forwarded-For (only for peers in FORWARDED_ALLOW_IPS); a header
    read again here would let any client pick its own address and escape the per-address limit.
    """
    return request.META.get("REMOTE_ADDR")


def lockout_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return (
        f"Too many failed log-in attempts: logging in to this account, or from your address, is locked for "
        f"{minutes} minutes after the last failed attempt. Try again later, reset your password, "
        f"or ask an admin to unlock it."
    )


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """The login page again, with the lockout explained, status 429.

    django-axes calls this as (request, response, credentials) from sync middleware and as
    (request, credentials) from async middleware; neither extra argument is needed. The form is
    unbound: validating it would authenticate once more and count another failure.
    """
    username = request.POST.get("username", "") if request.method == "POST" else ""
    from arbiter.accounts.views import LoginForm  # views import this module

    form = LoginForm(request, initial={"username": username[:150]})
    context = {"form": form, "lockout_message": lockout_message(), "next": request.POST.get("next", "")}
    return render(request, "registration/login.html", context, status=LOCKOUT_STATUS)


def _spend(key: str, *, limit: int) -> bool:
    """Count one use in this hour's window of `key`; whether it stayed within `limit`."""
    window = int(time.time() // 3600)
    full = f"pwreset:{key}:{window}"
    cache.add(full, 0, timeout=3600 + 60)
    try:
        used = cache.incr(full)
    except ValueError:  # expired between add and incr (the window turned): this use is the first of it
        cache.set(full, 1, timeout=3600 + 60)
        used = 1
    return used <= limit


def password_reset_mail_allowed(*, email: str, address: str | None) -> bool:
    """Whether a reset e-mail may go out for `email` asked from `address` (both counted either way).

    Counted by the typed address whether or not an account has it, so the budget tells nothing about
    which addresses exist.
    """
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    per_email = _spend(f"email:{digest}", limit=settings.PASSWORD_RESET_MAILS_PER_HOUR)
    per_client = _spend(f"client:{address or '-'}", limit=settings.PASSWORD_RESET_REQUESTS_PER_HOUR)
    return per_email and per_client
