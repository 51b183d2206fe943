"""Chromium logs in through the real login form and sees the dashboard; an annotator sees their queue."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import User

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
