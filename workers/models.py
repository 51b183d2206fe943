"""A GPU worker's credential: what a host with no database access presents to claim, beat and finish runs."""

from __future__ import annotations

from django.db import models


class WorkerCredential(models.Model):
    name = models.CharField(max_length=100, unique=True)  # recorded as the run's worker
    token_hash = models.CharField(max_length=64, unique=True)  # SHA-256 of the plain token, shown once
    prefix = models.CharField(max_length=12)
    queues = models.JSONField(default=list, blank=True)  # what the worker said it consumes (last hello)
    slots = models.JSONField(default=list, blank=True)  # its GPU slots (last hello)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
