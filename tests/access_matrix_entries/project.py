"""Project-level URLs (arbiter/urls.py, accounts, admin)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.tokens import default_token_generator
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from tests.access_matrix_entries import EVERYONE, RESEARCHERS, Access


def _reset_link(owner: Any) -> dict[str, Any]:
    return {"uidb64": urlsafe_base64_encode(force_bytes(owner.pk)), "token": default_token_generator.make_token(owner)}


ENTRIES = {
    "home": Access(roles=EVERYONE),
    "dashboard": Access(roles=RESEARCHERS),
    "healthz": Access(auth="public"),
    "login": Access(auth="public"),
    "logout": Access(auth="public", method="post"),  # logging out is harmless for anyone
    # The reset flow is for people who cannot log in; the link itself is the credential.
    "password_reset": Access(auth="public"),
    "password_reset_done": Access(auth="public"),
    "password_reset_confirm": Access(auth="public", objects="reset_link"),
    "password_reset_complete": Access(auth="public"),
}
BUILDERS: dict[str, object] = {"reset_link": _reset_link}
