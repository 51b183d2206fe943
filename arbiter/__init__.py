"""Arbiter's Django config package (named arbiter/, not platform/, which would shadow the stdlib module)."""

from arbiter.celery import app as celery_app

__all__ = ["celery_app"]
