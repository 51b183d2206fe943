"""Project-level URLs (arbiter/urls.py, accounts, admin)."""

from __future__ import annotations

from tests.access_matrix_entries import EVERYONE, RESEARCHERS, Access

ENTRIES = {
    "home": Access(roles=EVERYONE),
    "dashboard": Access(roles=RESEARCHERS),
    "healthz": Access(auth="public"),
    "login": Access(auth="public"),
    "logout": Access(auth="public", method="post"),  # logging out is harmless for anyone
}
BUILDERS: dict[str, object] = {}
