"""Chromium logs in through the real login form and sees the dashboard; an annotator sees their queue."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import User
from tests.factories import TEST_PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def test_researcher_logs_in_and_sees_the_dashboard(
    asgi_server: Any, page: Any, login_page: Any, researcher: User
) -> None:
    login_page(page, asgi_server.url, researcher)
    page.wait_for_url(f"{asgi_server.url}/dashboard/")
    assert page.locator("h1").inner_text() == "Dashboard"
    nav = page.locator("nav.nav").inner_text()
    assert "Runs" in nav and "Studies" in nav and "My queue" not in nav
    # htmx is served by the project itself, not a CDN
    assert page.evaluate("typeof window.htmx") == "object"


def test_annotator_logs_in_and_lands_on_the_queue(
    asgi_server: Any, page: Any, login_page: Any, annotator: User
) -> None:
    login_page(page, asgi_server.url, annotator)
    page.wait_for_url(f"{asgi_server.url}/annotate/")
    nav = page.locator("nav.nav").inner_text()
    assert "My queue" in nav and "Runs" not in nav


def test_wrong_password_shows_an_error(asgi_server: Any, page: Any, researcher: User) -> None:
    page.goto(f"{asgi_server.url}/accounts/login/")
    page.fill("#id_username", researcher.username)
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    assert "didn't match" in page.locator("[role=alert]").inner_text()


# ---------- throttling (django-axes) ----------

LOCKED = "Too many failed log-in attempts"


def _as_client(browser: Any, address: str) -> Any:
    """A page of a browser at `address`: the test server believes X-Forwarded-For from its local peer, as
    uvicorn does for a trusted proxy (FORWARDED_ALLOW_IPS), so each context stands for another client."""
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": address})
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def _submit(page: Any, base_url: str, username: str, password: str) -> str:
    """Log in through the form; the alert's text, or "" when the login went through."""
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("domcontentloaded")
    if "/accounts/login/" not in page.url:
        return ""
    return str(page.locator("[role=alert]").inner_text())


def test_the_right_password_is_refused_after_too_many_wrong_ones(
    asgi_server: Any, browser: Any, researcher: User
) -> None:
    from django.conf import settings

    page = _as_client(browser, "203.0.113.10")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert "didn't match" in _submit(page, asgi_server.url, researcher.username, "wrong")
    assert LOCKED in _submit(page, asgi_server.url, researcher.username, "wrong")
    assert LOCKED in _submit(page, asgi_server.url, researcher.username, TEST_PASSWORD)
    assert page.input_value("#id_username") == researcher.username  # the form again, name kept
    page.goto(f"{asgi_server.url}/dashboard/")
    assert "/accounts/login/" in page.url  # not logged in
    page.context.close()


def test_a_lockout_holds_the_account_and_the_address_and_nothing_else(
    asgi_server: Any, browser: Any, researcher: User, other_researcher: User
) -> None:
    from django.conf import settings

    attacker = _as_client(browser, "203.0.113.20")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _submit(attacker, asgi_server.url, researcher.username, "wrong")
    elsewhere = _as_client(browser, "198.51.100.20")
    # the account is locked wherever its owner is...
    assert LOCKED in _submit(elsewhere, asgi_server.url, researcher.username, TEST_PASSWORD)
    # ...the address is locked whatever account it tries...
    assert LOCKED in _submit(attacker, asgi_server.url, other_researcher.username, TEST_PASSWORD)
    # ...and another account from another address logs in as usual.
    assert _submit(elsewhere, asgi_server.url, other_researcher.username, TEST_PASSWORD) == ""
    assert "/dashboard/" in elsewhere.url
    attacker.context.close()
    elsewhere.context.close()


def test_the_lockout_ends_after_the_cool_off(asgi_server: Any, browser: Any, researcher: User) -> None:
    from datetime import timedelta

    from axes.models import AccessAttempt
    from django.conf import settings
    from django.utils import timezone

    page = _as_client(browser, "203.0.113.30")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _submit(page, asgi_server.url, researcher.username, "wrong")
    assert LOCKED in _submit(page, asgi_server.url, researcher.username, TEST_PASSWORD)
    # The cool-off passes (the lockout is computed from the failures' times, stored in the database).
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert _submit(page, asgi_server.url, researcher.username, TEST_PASSWORD) == ""
    assert "/dashboard/" in page.url
    page.context.close()


# ---------- password reset ----------


def _reset_link(mail_dir: Any, address: str) -> str:
    """The link in the one e-mail the server wrote to `address` (Django's file-based mail backend)."""
    import re
    from pathlib import Path

    messages = [p.read_text() for p in sorted(Path(mail_dir).glob("*.log"))] if Path(mail_dir).exists() else []
    mine = [m for m in messages if f"To: {address}" in m]
    assert len(mine) == 1, f"{len(mine)} e-mails to {address}"
    match = re.search(r"https?://\S+/accounts/reset/\S+/", mine[0])
    assert match, mine[0]
    return match.group(0)


def test_password_reset_end_to_end_and_the_link_works_once(asgi_server: Any, page: Any, researcher: User) -> None:
    new_password = "a-new-and-long-passphrase-42"
    page.goto(f"{asgi_server.url}/accounts/login/")
    page.click("text=Forgot your password?")
    page.fill("#id_email", researcher.email)
    page.click("button[type=submit]")
    assert "If an account has that address" in page.locator("[role=status]").inner_text()

    link = _reset_link(asgi_server.mail_dir, researcher.email)
    page.goto(link)
    page.fill("#id_new_password1", new_password)
    page.fill("#id_new_password2", new_password)
    page.click("button[type=submit]")
    assert page.locator("h1").inner_text() == "Password set"

    assert "didn't match" in _submit(page, asgi_server.url, researcher.username, TEST_PASSWORD)
    assert _submit(page, asgi_server.url, researcher.username, new_password) == ""
    assert "/dashboard/" in page.url

    page.context.clear_cookies()
    page.goto(link)  # the same link a second time
    assert "This link does not work" in page.locator("h1").inner_text()
    assert page.locator("#id_new_password1").count() == 0


def test_password_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(
    asgi_server: Any, page: Any, researcher: User
) -> None:
    from pathlib import Path

    page.goto(f"{asgi_server.url}/accounts/password-reset/")
    page.fill("#id_email", "nobody@example.org")
    page.click("button[type=submit]")
    assert "If an account has that address" in page.locator("[role=status]").inner_text()
    mail_dir = Path(asgi_server.mail_dir)
    sent = [p.read_text() for p in mail_dir.glob("*.log")] if mail_dir.exists() else []
    assert not [m for m in sent if "To: nobody@example.org" in m]
