"""Django app of GPU workers: their credentials and the token-authenticated API a Django-free worker reports through."""

from django.apps import AppConfig


class WorkersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "workers"
