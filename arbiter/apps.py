"""App config for the project package itself (management commands, templates tags)."""

from django.apps import AppConfig


class ArbiterConfig(AppConfig):
    name = "arbiter"
    verbose_name = "Arbiter"

    def ready(self) -> None:
        # Open websockets re-check access when a logout, a user edit or an unshare happens (any process).
        from arbiter.live_access import connect_signals

        connect_signals()
