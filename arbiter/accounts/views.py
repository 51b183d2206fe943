"""Account pages that are more than Django's own views: a reset form with an e-mail budget, and a reset
that also lifts a lockout."""

from __future__ import annotations

import logging

from axes.utils import reset as reset_login_failures
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm, SetPasswordForm
from django.core.validators import MaxLengthValidator
from django.http import HttpResponse, HttpResponseRedirect

from arbiter.accounts.throttling import client_address, password_reset_mail_allowed

logger = logging.getLogger(__name__)


class LoginForm(AuthenticationForm):
    """Django's form, with its username's length enforced on the server.

    AuthenticationForm sets the field's max_length after the field is built, so the length is only the input's
    `maxlength` attribute: a longer name (a script, not the page) went on to authenticate(), and django-axes
    failed to record the failure (its username column is 255 wide), a 500. Too long now fails like a wrong name,
    before authenticate(): no account can have it.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        field = self.fields["username"]
        field.validators.append(MaxLengthValidator(field.max_length))  # type: ignore[attr-defined]


class LoginView(auth_views.LoginView):
    authentication_form = LoginForm
    redirect_authenticated_user = True


class PasswordResetView(auth_views.PasswordResetView):
    """Django's view; past the hourly budget (per typed address, per client) it sends nothing.

    The answer is the same "check your e-mail" page either way: a refusal would tell who is being
    targeted, and the budget is counted whether or not an account has the address.
    """

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        address = client_address(self.request)
        if not password_reset_mail_allowed(email=form.cleaned_data["email"], address=address):
            logger.warning("password reset e-mail not sent: hourly budget spent (client %s)", address)
            return HttpResponseRedirect(self.get_success_url())
        return super().form_valid(form)


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Django's view; a new password set through the e-mailed link also clears the account's failed logins.

    The link proves the person controls the account's e-mail, which is what an admin would ask before
    unlocking it (Devise, GitLab's authentication, unlocks on a reset the same way). The failures deleted
    are those against this account name, from any address; an address's failures against other
    accounts stay and keep it locked.
    """

    def form_valid(self, form: SetPasswordForm) -> HttpResponse:  # type: ignore[type-arg]
        response = super().form_valid(form)
        reset_login_failures(username=form.user.get_username())
        return response
