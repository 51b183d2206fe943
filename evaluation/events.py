"""Live study events: group names, typed messages, and the throttled progress broadcast.

The database is the record; a socket only says "progress is now N". Each message
carries the absolute counts and `seq` (judgments so far), so a page that missed
one just applies the next, and one that fetched newer state over HTTP ignores
older messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)

_last_sent: dict[int, float] = {}


class ProgressPayload(TypedDict):
    kind: str  # "progress"
    seq: int
    items: int
    judgments: int
    target: int
    open_leases: int
    annotators_active: int
    percent: float


class StudyEventMessage(TypedDict):
    type: str  # "study.event" -> StudyConsumer.study_event
    payload: ProgressPayload


def study_group(study_id: int) -> str:
    return f"study.{study_id}"


def notify_progress(*, study_id: int, force: bool = False) -> None:
    """Broadcast the study's progress, at most once per throttle window per process.

    With 32 annotators submitting, one message per judgment would be hundreds a
    second for a page that redraws a bar; pages also refetch on an interval, so a
    message dropped by the throttle only delays the bar by that interval.
    """
    throttle = float(getattr(settings, "EVALUATION_PROGRESS_THROTTLE_S", 0.5))
    now = time.monotonic()
    if not force and now - _last_sent.get(study_id, -1e9) < throttle:
        return
    _last_sent[study_id] = now
    from evaluation.selectors import study_progress  # selectors import models; events stays light

    layer = get_channel_layer()
    if layer is None:
        return
    message: StudyEventMessage = {"type": "study.event", "payload": study_progress(study_id=study_id)}
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _send(layer, study_group(study_id), message)
    else:
        # This thread runs an event loop (a sync call made from async code, a browser driver in
        # tests): async_to_sync refuses to run here, so send from a short-lived thread.
        sender = threading.Thread(target=_send, args=(layer, study_group(study_id), message))
        sender.start()
        sender.join(timeout=5)


def _send(layer: Any, group: str, message: StudyEventMessage) -> None:
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # a socket is a hint: never fail a judgment because Redis hiccupped
        logger.warning("progress broadcast to %s failed", group, exc_info=True)
