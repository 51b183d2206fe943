"""App config for the loop between training and studies: sampling checkpoints into studies, the leaderboard, lineage."""

from django.apps import AppConfig


class LoopConfig(AppConfig):
    name = "loop"
    verbose_name = "Loop (sampling, leaderboard, lineage)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from arbiter import dependants

        # A run names its data by path in its config; linking it to the export it came from happens when the
        # run row is created (whatever created it: the launch form, the API, retry, resume).
        from loop import signals  # noqa: F401

        # Deleting a run or a study asks the loop what still needs it (training and studies cannot import the loop).
        from loop.dependants import run_dependants, study_dependants

        dependants.register("training.Run", run_dependants)
        dependants.register("evaluation.Study", study_dependants)
