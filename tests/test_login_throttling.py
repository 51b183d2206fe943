"""Login throttling (django-axes) through the real login view: per account, per address, cool-off, unlock.

The browser versions of the main cases are in tests/browser/test_login.py; these cover the rules one by one.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client
from django.utils import timezone

from arbiter.accounts.models import Role, User
from tests.factories import TEST_PASSWORD, UserFactory

pytestmark = pytest.mark.sqlite  # also on the embedded SQLite database (make test)
LIMIT = settings.AXES_FAILURE_LIMIT
LOCKED = b"Too many failed log-in attempts"


def _login(username: str, password: str, address: str = "198.51.100.1", **headers: str) -> Any:
    """One POST to the login form from `address` (the ASGI server's client address: REMOTE_ADDR)."""
    return Client(REMOTE_ADDR=address, **headers).post("/accounts/login/", {"username": username, "password": password})


def _fail(username: str, times: int, address: str = "198.51.100.1") -> None:
    for _ in range(times):
        response = _login(username, "wrong-password", address)
        assert response.status_code in {200, 429}


def test_the_limit_is_a_real_number() -> None:
    assert 3 <= LIMIT <= 20  # the tests below would prove nothing with a limit of 1 or of 1,000


def test_failures_below_the_limit_do_not_lock(researcher: User) -> None:
    _fail(researcher.username, LIMIT - 1)
    assert _login(researcher.username, TEST_PASSWORD).status_code == 302


def test_right_password_after_the_limit_is_refused_with_the_lockout_page(researcher: User) -> None:
    _fail(researcher.username, LIMIT)
    response = _login(researcher.username, TEST_PASSWORD)
    assert response.status_code == 429
    assert LOCKED in response.content
    assert b'id="id_username"' in response.content  # the login page again, not a bare error
    assert "_auth_user_id" not in response.client.session


def test_the_failure_that_reaches_the_limit_already_shows_the_lockout(researcher: User) -> None:
    _fail(researcher.username, LIMIT - 1)
    response = _login(researcher.username, "wrong-password")
    assert response.status_code == 429 and LOCKED in response.content


def test_an_account_is_locked_from_every_address(researcher: User) -> None:
    """Per account: spreading guesses over addresses (a botnet) does not reset the count."""
    for i in range(LIMIT):
        _login(researcher.username, "wrong-password", address=f"203.0.113.{i + 1}")
    assert _login(researcher.username, TEST_PASSWORD, address="192.0.2.99").status_code == 429


def test_an_address_is_locked_for_every_account(researcher: User, other_researcher: User) -> None:
    """Per address: one guess per account over many accounts (password spraying) is counted too."""
    for i in range(LIMIT):
        _login(f"nobody{i}", "wrong-password", address="203.0.113.50")
    assert _login(researcher.username, TEST_PASSWORD, address="203.0.113.50").status_code == 429
    # ...while the same accounts log in from anywhere else.
    assert _login(researcher.username, TEST_PASSWORD, address="203.0.113.51").status_code == 302
    assert _login(other_researcher.username, TEST_PASSWORD, address="203.0.113.51").status_code == 302


def test_other_accounts_from_other_addresses_are_unaffected(researcher: User, other_researcher: User) -> None:
    _fail(researcher.username, LIMIT, address="203.0.113.60")
    assert _login(other_researcher.username, TEST_PASSWORD, address="203.0.113.61").status_code == 302


def test_a_forged_forwarding_header_does_not_give_a_new_address(researcher: User) -> None:
    """Django reads no forwarding header: only the ASGI server decides (FORWARDED_ALLOW_IPS), see README."""
    for i in range(LIMIT):
        _login(f"nobody{i}", "wrong-password", "203.0.113.70", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    response = _login(researcher.username, TEST_PASSWORD, "203.0.113.70", HTTP_X_FORWARDED_FOR="192.0.2.200")
    assert response.status_code == 429


def test_nonexistent_accounts_lock_like_real_ones(researcher: User) -> None:
    """The lockout does not tell whether an account exists: the same 429 page for a made-up name."""
    _fail("no-such-user", LIMIT, address="203.0.113.80")
    _fail(researcher.username, LIMIT, address="203.0.113.81")
    ghost = _login("no-such-user", "x", address="203.0.113.82")
    real = _login(researcher.username, "x", address="203.0.113.83")
    assert ghost.status_code == real.status_code == 429

    def page(response: Any, name: str) -> bytes:  # the page without the name typed and the per-request CSRF token
        return re.sub(rb"[A-Za-z0-9]{64}", b"CSRF", response.content.replace(name.encode(), b"NAME"))

    assert page(ghost, "no-such-user") == page(real, researcher.username)


def test_the_lock_lifts_after_the_cool_off(researcher: User) -> None:
    _fail(researcher.username, LIMIT)
    assert _login(researcher.username, TEST_PASSWORD).status_code == 429
    # Time passes: the failures are now older than the cool-off (the lockout is computed from their times).
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert _login(researcher.username, TEST_PASSWORD).status_code == 302


def test_a_failure_during_the_lockout_starts_the_cool_off_again(researcher: User) -> None:
    _fail(researcher.username, LIMIT)
    almost = timezone.now() - settings.AXES_COOLOFF_TIME + timedelta(seconds=30)
    AccessAttempt.objects.update(attempt_time=almost)
    _fail(researcher.username, 1)  # a guess 30 s before the lock would have lifted
    AccessAttempt.objects.filter(attempt_time__gt=almost).update(attempt_time=almost + timedelta(seconds=60))
    assert _login(researcher.username, TEST_PASSWORD).status_code == 429


def test_a_success_does_not_reset_the_address_count(researcher: User, other_researcher: User) -> None:
    """An attacker logging into their own account between guesses must not wipe the address's failures."""
    address = "203.0.113.90"
    _fail("victim", LIMIT - 1, address=address)
    assert _login(other_researcher.username, TEST_PASSWORD, address=address).status_code == 302
    _fail("victim", 1, address=address)
    assert _login(researcher.username, TEST_PASSWORD, address=address).status_code == 429


def test_an_admin_unlocks_an_account_in_the_admin(researcher: User, admin_user: User, client_for: Any) -> None:
    _fail(researcher.username, LIMIT, address="203.0.113.100")
    assert _login(researcher.username, TEST_PASSWORD, address="192.0.2.1").status_code == 429
    admin = client_for(admin_user)
    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and researcher.username.encode() in listing.content
    ids = [str(pk) for pk in AccessAttempt.objects.filter(username=researcher.username).values_list("pk", flat=True)]
    response = admin.post(
        "/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": ids, "post": "yes"}
    )
    assert response.status_code == 302
    assert _login(researcher.username, TEST_PASSWORD, address="192.0.2.1").status_code == 302


def test_the_unlock_command_lifts_a_lockout(researcher: User) -> None:
    from django.core.management import call_command

    _fail(researcher.username, LIMIT)
    call_command("axes_reset_username", researcher.username)
    assert _login(researcher.username, TEST_PASSWORD).status_code == 302


def test_the_admin_login_is_throttled_too(admin_user: User) -> None:
    client = Client(REMOTE_ADDR="203.0.113.110")
    for _ in range(LIMIT):
        client.post("/admin/login/", {"username": admin_user.username, "password": "wrong"})
    response = client.post("/admin/login/", {"username": admin_user.username, "password": TEST_PASSWORD})
    assert response.status_code == 429 and LOCKED in response.content


def test_wrong_api_keys_do_not_lock_anyone_out(researcher: User) -> None:
    """API keys are 256-bit random secrets: guessing one cannot succeed, so a wrong key is a plain 401 and is
    not counted against the address (a misconfigured script must not lock its whole host out of the web)."""
    from training.models import ApiToken, hash_token, new_token

    token = new_token("arb_u")
    ApiToken.objects.create(user=researcher, name="ci", token_hash=hash_token(token), prefix=token[:12])
    address = "203.0.113.120"
    api = Client(REMOTE_ADDR=address)
    for _ in range(LIMIT * 3):
        assert api.get("/api/leaderboard/", HTTP_AUTHORIZATION=f"Bearer {new_token('arb_u')}").status_code == 401
    assert api.get("/api/leaderboard/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    assert not AccessAttempt.objects.exists()
    assert _login(researcher.username, TEST_PASSWORD, address=address).status_code == 302


@pytest.mark.django_db
def test_annotators_are_throttled_like_researchers() -> None:
    annotator = UserFactory(role=Role.ANNOTATOR)
    _fail(annotator.username, LIMIT, address="203.0.113.130")
    assert _login(annotator.username, TEST_PASSWORD, address="192.0.2.130").status_code == 429


@pytest.mark.parametrize("username", ["a" * 100_000, "a" * 151, "ann\x00"])
def test_a_username_no_account_can_have_is_a_wrong_login_not_a_500(db: None, username: str) -> None:
    """Longer than a username may be (the form's maxlength is only the input's attribute) or with a NUL: refused
    on the form before authenticate(), so nothing reaches django-axes' 255-wide column or the database."""
    response = _login(username, "wrong-password")
    assert response.status_code == 200 and response.context["form"].errors
    assert not AccessAttempt.objects.exists()
