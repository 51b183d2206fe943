"""App config for accounts (label `accounts`, so AUTH_USER_MODEL is `accounts.User`)."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "arbiter.accounts"
    label = "accounts"
    verbose_name = "Accounts and roles"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connect the cached-user invalidation in every process, not only in those that authenticate.
        from arbiter.accounts import backends  # noqa: F401
