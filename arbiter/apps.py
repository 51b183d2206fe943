"""App config for the project package itself (management commands, templates tags)."""

from django.apps import AppConfig


class ArbiterConfig(AppConfig):
    name = "arbiter"
    verbose_name = "Arbiter"
