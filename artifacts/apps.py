"""Django app config of the artifact store: datasets, exports, checkpoints and sample sets addressed by URI."""

from django.apps import AppConfig


class ArtifactsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "artifacts"
