"""Password reset through Django's views: the e-mail (Django's test outbox), one use per link, no account oracle."""

from __future__ import annotations

import re
import uuid

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client

from arbiter.accounts.models import User
from tests.factories import TEST_PASSWORD, UserFactory

pytestmark = pytest.mark.sqlite
NEW_PASSWORD = "a-new-and-long-passphrase-42"


def _fresh_address() -> str:
    """A client address of its own: the reset budgets are counted per hour in the shared cache."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


@pytest.fixture
def person(db: None) -> User:
    """A researcher with an e-mail address of their own (the budget per address lives for an hour)."""
    return UserFactory(email=f"{uuid.uuid4().hex[:10]}@example.org")


def _ask_for_link(email: str, address: str | None = None) -> str:
    client = Client(REMOTE_ADDR=address or _fresh_address())
    response = client.post("/accounts/password-reset/", {"email": email}, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def _link_in(message: mail.EmailMessage) -> str:
    match = re.search(r"http://testserver(/accounts/reset/\S+/)", str(message.body))
    assert match, message.body
    return match.group(1)


def _can_log_in(username: str, password: str) -> bool:
    """Through the login form, as a person would (django-axes refuses `Client.login`, which has no request)."""
    response = Client(REMOTE_ADDR="192.0.2.250").post("/accounts/login/", {"username": username, "password": password})
    return response.status_code == 302


def _set_password(client: Client, link: str, password: str) -> int:
    """Open the e-mailed link, then post the new password to where it leads; the final status code."""
    opened = client.get(link, follow=True)
    form_url = opened.redirect_chain[-1][0] if opened.redirect_chain else link
    response = client.post(form_url, {"new_password1": password, "new_password2": password}, follow=True)
    return int(response.status_code) if b"Password set" in response.content else -1


def test_the_reset_mail_carries_a_link_that_sets_a_new_password(person: User) -> None:
    _ask_for_link(person.email)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [person.email] and message.subject == "Reset your Arbiter password"
    assert _set_password(Client(), _link_in(message), NEW_PASSWORD) == 200
    assert _can_log_in(person.username, NEW_PASSWORD)
    assert not _can_log_in(person.username, TEST_PASSWORD)


def test_a_link_works_once(person: User) -> None:
    _ask_for_link(person.email)
    link = _link_in(mail.outbox[0])
    assert _set_password(Client(), link, NEW_PASSWORD) == 200
    again = Client().get(link, follow=True)
    assert b"This link does not work" in again.content
    assert _set_password(Client(), link, "yet-another-passphrase-77") == -1
    assert _can_log_in(person.username, NEW_PASSWORD)


def test_an_unknown_address_gets_the_same_page_and_no_mail(person: User) -> None:
    def page(html: str) -> str:
        return re.sub(r"[A-Za-z0-9]{64}", "CSRF", html)

    known = _ask_for_link(person.email)
    unknown = _ask_for_link("nobody@example.org")
    assert page(known) == page(unknown)
    assert [m.to for m in mail.outbox] == [[person.email]]


def test_a_deactivated_account_gets_no_mail(person: User) -> None:
    person.is_active = False
    person.save()
    _ask_for_link(person.email)
    assert mail.outbox == []


def test_a_reset_lifts_the_account_lockout(person: User) -> None:
    """As Devise (GitLab) does: the e-mailed link proves the owner, so the account's failures are cleared."""
    guesser = "203.0.113.1"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        Client(REMOTE_ADDR=guesser).post("/accounts/login/", {"username": person.username, "password": "x"})
        Client(REMOTE_ADDR=guesser).post("/accounts/login/", {"username": "someone-else", "password": "x"})
    attempt = {"username": person.username, "password": TEST_PASSWORD}
    assert Client(REMOTE_ADDR="192.0.2.1").post("/accounts/login/", attempt).status_code == 429
    _ask_for_link(person.email)
    assert _set_password(Client(), _link_in(mail.outbox[0]), NEW_PASSWORD) == 200
    attempt["password"] = NEW_PASSWORD
    assert Client(REMOTE_ADDR="192.0.2.1").post("/accounts/login/", attempt).status_code == 302
    # the guessing address stays locked by its failures against other accounts
    assert Client(REMOTE_ADDR=guesser).post("/accounts/login/", attempt).status_code == 429


def test_reset_mails_to_one_address_stop_at_the_hourly_budget(person: User) -> None:
    """Nobody can make the platform mail-bomb a colleague: past the budget the page is the same, no mail."""
    budget = settings.PASSWORD_RESET_MAILS_PER_HOUR
    pages = [_ask_for_link(person.email) for _ in range(budget + 2)]
    assert len(mail.outbox) == budget
    assert len({re.sub(r"[A-Za-z0-9]{64}", "CSRF", p) for p in pages}) == 1  # nothing tells the sender
    other = UserFactory(email=f"{uuid.uuid4().hex[:8]}@example.org")
    _ask_for_link(other.email)
    assert mail.outbox[-1].to == [other.email]  # another address has its own budget


def test_one_client_asking_for_many_addresses_stops_at_its_budget(person: User) -> None:
    client = Client(REMOTE_ADDR=_fresh_address())
    budget = settings.PASSWORD_RESET_REQUESTS_PER_HOUR
    for i in range(budget):
        client.post("/accounts/password-reset/", {"email": f"spray{i}-{uuid.uuid4().hex[:6]}@example.org"})
    assert mail.outbox == []  # none of those addresses has an account
    client.post("/accounts/password-reset/", {"email": person.email})
    assert mail.outbox == []  # over the client's budget: not sent, though the account exists
    Client(REMOTE_ADDR=_fresh_address()).post("/accounts/password-reset/", {"email": person.email})
    assert [m.to for m in mail.outbox] == [[person.email]]
