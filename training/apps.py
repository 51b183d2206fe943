"""App config for training runs."""

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from arbiter import dependants
        from training.services.run_records import runs_using_checkpoints

        dependants.register("training.Run", runs_using_checkpoints)
