"""Every URL the project has, opened by every role: the wrong role is refused, the right one gets in.

A page added without an entry in tests/access_matrix_entries/ fails `test_every_url_has_an_entry`, so nobody
ships a view without deciding who may see it.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from arbiter.accounts.models import Role, User
from tests import access_matrix_entries
from tests.access_matrix_entries import Access
from tests.factories import UserFactory

REFUSED = {401, 403, 404, 405}


def _collect_entries() -> tuple[dict[str, Access], dict[str, Any]]:
    entries: dict[str, Access] = {}
    builders: dict[str, Any] = {}
    for module_info in pkgutil.iter_modules(access_matrix_entries.__path__):
        module = importlib.import_module(f"{access_matrix_entries.__name__}.{module_info.name}")
        entries.update(module.ENTRIES)
        builders.update(module.BUILDERS)
    return entries, builders


def _walk(patterns: list[Any], namespace: str | None = None) -> list[tuple[str | None, str]]:
    """(full name or None, route) for every leaf pattern; Django admin is covered by its own test below."""
    found: list[tuple[str | None, str]] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            ns = pattern.namespace
            if ns == "admin":
                continue
            full_ns = ":".join(filter(None, [namespace, ns])) or None
            found.extend(_walk(pattern.url_patterns, full_ns))
        elif isinstance(pattern, URLPattern):
            name = pattern.name and (f"{namespace}:{pattern.name}" if namespace else pattern.name)
            found.append((name, str(pattern.pattern)))
    return found


ENTRIES, BUILDERS = _collect_entries()
ALL_URLS = _walk(get_resolver().url_patterns)


def test_every_url_is_named_and_has_an_entry() -> None:
    unnamed = [route for name, route in ALL_URLS if not name]
    missing = sorted({name for name, _ in ALL_URLS if name and name not in ENTRIES})
    assert not unnamed, f"unnamed URL patterns (name them, then add an access entry): {unnamed}"
    assert not missing, f"URLs without an access-matrix entry: {missing}"


def test_no_entry_points_at_a_url_that_is_gone() -> None:
    names = {name for name, _ in ALL_URLS}
    stale = sorted(set(ENTRIES) - names)
    assert not stale, f"access entries for URLs that no longer exist: {stale}"


def _url(name: str, entry: Access, owner: User) -> str:
    kwargs = BUILDERS[entry.objects](owner) if entry.objects else {}
    return reverse(name, kwargs=kwargs)


def _users() -> dict[str, User]:
    return {
        "researcher": UserFactory(role=Role.RESEARCHER),
        "other_researcher": UserFactory(role=Role.RESEARCHER),
        "annotator": UserFactory(role=Role.ANNOTATOR),
        "admin": UserFactory(role=Role.ADMIN, is_superuser=True),
    }


def _request(client: Any, method: str, url: str) -> int:
    """Status code, with a redirect to the login page counted as 401 (the user was not let in)."""
    response = client.post(url) if method == "post" else client.get(url)
    if response.status_code == 302 and "/accounts/login/" in response.get("Location", ""):
        return 401
    return int(response.status_code)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(n for n, _ in ALL_URLS if n in ENTRIES))
def test_url_refuses_the_wrong_roles_and_admits_the_right_ones(name: str, client_for: Any) -> None:
    entry = ENTRIES[name]
    users = _users()
    url = _url(name, entry, users["researcher"])

    if entry.auth == "public":
        response = client_for(None).post(url) if entry.method == "post" else client_for(None).get(url)
        assert response.status_code < 400, f"{name}: public page answered {response.status_code}"
        return
    anonymous = _request(client_for(None), entry.method, url)
    assert anonymous in REFUSED, f"{name}: anonymous got {anonymous}"

    for role in ("researcher", "annotator", "admin"):
        status = _request(client_for(users[role]), entry.method, url)
        if entry.auth == "token":
            assert status in {401, 403, 404, 405}, f"{name}: a {role}'s session was accepted by a token API ({status})"
        elif role in entry.roles:
            assert status not in {401, 403, 404}, f"{name}: {role} should get in, got {status}"
        else:
            assert status in {403, 404}, f"{name}: {role} should be refused, got {status}"

    if entry.objects and entry.auth == "session" and "researcher" in entry.roles:
        status = _request(client_for(users["other_researcher"]), entry.method, url)
        if entry.shared:
            assert status not in {401, 403, 404}, f"{name}: a shared object was refused ({status})"
        else:
            assert status == 404, f"{name}: another researcher's object answered {status}, not 404"


@pytest.mark.django_db
def test_django_admin_is_for_admins_only(client_for: Any) -> None:
    users = _users()
    assert client_for(users["admin"]).get("/admin/").status_code == 200
    for role in ("researcher", "annotator"):
        response = client_for(users[role]).get("/admin/")
        assert response.status_code == 302 and re.search(r"/admin/login/", response["Location"])
