"""App config for human studies."""

from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    name = "evaluation"
    verbose_name = "Human studies"
    default_auto_field = "django.db.models.BigAutoField"
