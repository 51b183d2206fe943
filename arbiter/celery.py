"""The Celery app, its queues, and task discovery across the Django apps."""

from __future__ import annotations

import os
from enum import StrEnum

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")


class Queue(StrEnum):
    """Queues workers subscribe to: short web-side work vs. GPU nodes that own training runs."""

    DEFAULT = "default"
    GPU = "gpu"


app = Celery("arbiter")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
