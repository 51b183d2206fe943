"""App config for the loop between training and studies: sampling checkpoints into studies, the leaderboard, lineage."""

from django.apps import AppConfig


class LoopConfig(AppConfig):
    name = "loop"
    verbose_name = "Loop (sampling, leaderboard, lineage)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A run names its data by path in its config; linking it to the export it came from happens when the
        # run row is created (whatever created it: the launch form, the API, retry, resume).
        from loop import signals  # noqa: F401
