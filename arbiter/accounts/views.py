"""Account pages that are more than Django's own views: the password reset that also lifts a lockout."""

from __future__ import annotations

from axes.utils import reset as reset_login_failures
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import SetPasswordForm
from django.http import HttpResponse


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
