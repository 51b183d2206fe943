"""Open websockets follow access changes: a socket stops streaming once its user may no longer see what it streams.

Access is decided at connect, then re-decided (paperless-ngx's consumers re-check on every message):

- on every message a socket forwards, from a decision cached for LIVE_ACCESS_RECHECK_S seconds, so
  the live path pays a clock read per message and one database check per socket every few seconds.
  A socket that keeps streaming re-decides in the background before its decision expires (at a
  random 50-80% of its age, so sockets opened together do not all check at once): a message never
  waits for that check, which otherwise ran in the process's one database thread, queued behind
  every other socket's, and was most of the live p99 (bench/bench_runs.py (c)). Every message is
  still sent under a decision whose check began less than LIVE_ACCESS_RECHECK_S ago; past that,
  the message waits for a fresh one, as before;
- at once, when something that decides access changes: a user logs out, is saved (deactivated,
  role or password changed) or deleted; a run or study is saved, deleted or unshared. The signal
  handlers below send "access.recheck" to the groups concerned (the user's own group `user.<id>`,
  which every socket joins, or the object's group), after the transaction commits.

The re-check reads the session again (a logout deletes it, a password change invalidates its hash,
a deactivated user no longer authenticates) and asks the consumer's own rule (`allowed`). A socket
that fails it is closed with code 4403, the code a refused connect gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from importlib import import_module
from types import SimpleNamespace
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import auth
from django.db import transaction

logger = logging.getLogger(__name__)

RECHECK = "access.recheck"  # message type: AccessCheckedConsumer.access_recheck
CLOSE_FORBIDDEN = 4403


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"


def announce_access_change(*, groups: Iterable[str]) -> None:
    """Ask every socket in `groups` to re-check its access, once the current transaction commits."""
    names = sorted(set(groups))
    if names:
        transaction.on_commit(lambda: _send(names))


def _send(groups: list[str]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, {"type": RECHECK})
        except Exception:  # the periodic re-check still catches it within LIVE_ACCESS_RECHECK_S
            logger.warning("access re-check for %s not sent", group, exc_info=True)


class AccessCheckedConsumer(AsyncJsonWebsocketConsumer):
    """Base of every websocket consumer: call `admit()` in connect and `still_allowed()` before each send."""

    revoked = False
    _valid_until = 0.0
    _refresh_at = 0.0
    _invalidated_at = 0.0  # when access last changed: a check begun before it decides nothing
    _refresh: asyncio.Task[None] | None = None
    _groups: list[str] = []

    def allowed(self, user: Any) -> bool:
        """Whether `user` may receive what this socket streams (sync: runs in a database thread)."""
        raise NotImplementedError

    async def admit(self, *, groups: Iterable[str] = ()) -> bool:
        """Check the connecting user: join `groups` and the user's own group and accept, or close with 4403."""
        user = self.scope.get("user")
        ok = user is not None and user.is_authenticated and await database_sync_to_async(self.allowed)(user)
        if not ok:
            await self.close(code=CLOSE_FORBIDDEN)
            return False
        self._groups = [*groups, user_group(user.pk)]
        for group in self._groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        self._decided(started=time.monotonic())
        return True

    async def disconnect(self, code: int) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        for group in self._groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def still_allowed(self) -> bool:
        """True while the cached decision is fresh, else decide again; closes the socket when refused.

        A fresh decision past its refresh point starts the next check in the background (see the module
        docstring) and answers at once."""
        if self.revoked:
            return False
        now = time.monotonic()
        if now < self._valid_until:
            if now >= self._refresh_at and self._refresh is None:
                self._refresh = asyncio.create_task(self._refresh_decision())
            return True
        return await self._decide()

    async def _decide(self) -> bool:
        started = time.monotonic()
        if await database_sync_to_async(self._recheck)():
            self._decided(started=started)
            return True
        if not self.revoked:
            self.revoked = True
            await self.close(code=CLOSE_FORBIDDEN)
        return False

    async def _refresh_decision(self) -> None:
        try:
            await self._decide()
        except Exception:  # the database away: the decision expires and the next message decides (or fails) itself
            logger.warning("background access re-check failed", exc_info=True)
        finally:
            self._refresh = None

    def _decided(self, *, started: float) -> None:
        """Access was granted by a check that began at `started`: valid for the interval from then."""
        interval = settings.LIVE_ACCESS_RECHECK_S
        if started >= self._invalidated_at and started + interval > self._valid_until:
            self._valid_until = started + interval
            self._refresh_at = started + interval * random.uniform(0.5, 0.8)  # noqa: S311 - spreading load

    async def access_recheck(self, message: dict[str, Any]) -> None:
        self._valid_until = 0.0
        self._invalidated_at = time.monotonic()  # a background check already under way may predate the change
        await self.still_allowed()

    def _recheck(self) -> bool:
        user = current_user(self.scope)
        connected = self.scope.get("user")
        if not user.is_authenticated or connected is None or user.pk != connected.pk:
            return False
        return self.allowed(user)


def current_user(scope: dict[str, Any]) -> Any:
    """The user the socket's session authenticates now (AnonymousUser after logout, deactivation, password change)."""
    session = scope.get("session")
    key = getattr(session, "session_key", None)
    if not key:
        return auth.models.AnonymousUser()
    store = import_module(settings.SESSION_ENGINE).SessionStore(key)  # a fresh read, not the connect-time copy
    # django.contrib.auth.get_user needs only `.session`; it verifies the session hash and asks the backend,
    # which refuses inactive users.
    return auth.get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]


# --- what changes access: signal handlers (admin edits and services alike) ----------------------


def connect_signals() -> None:
    """Called once from ArbiterConfig.ready()."""
    from django.contrib.auth.signals import user_logged_out
    from django.db.models.signals import m2m_changed, post_delete, post_save

    from arbiter.accounts.models import User
    from evaluation.models import Study
    from training.models import Run

    user_logged_out.connect(_on_logout, dispatch_uid="live_access.logout")
    post_save.connect(_on_user_saved, sender=User, dispatch_uid="live_access.user_saved")
    post_delete.connect(_on_user_deleted, sender=User, dispatch_uid="live_access.user_deleted")
    post_save.connect(_on_run_saved, sender=Run, dispatch_uid="live_access.run_saved")
    post_delete.connect(_on_run_deleted, sender=Run, dispatch_uid="live_access.run_deleted")
    post_save.connect(_on_study_saved, sender=Study, dispatch_uid="live_access.study_saved")
    post_delete.connect(_on_study_deleted, sender=Study, dispatch_uid="live_access.study_deleted")
    m2m_changed.connect(_on_study_sharing, sender=Study.shared_with.through, dispatch_uid="live_access.study_sharing")


def _on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        # This session's sockets and the user's others alike re-read their own session: only this one is gone.
        announce_access_change(groups=[user_group(user.pk)])


def _on_user_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    # A login stamps last_login through save(update_fields=...): that changes nobody's access.
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    announce_access_change(groups=[user_group(instance.pk)])


def _on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    announce_access_change(groups=[user_group(instance.pk)])


def _on_run_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    # Status moves are queryset updates (no signal); a save is an edit (sharing, owner) from the admin or a service.
    if not created:
        from training.events import run_group

        announce_access_change(groups=[run_group(instance.pk)])


def _on_run_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    from training.events import run_group

    announce_access_change(groups=[run_group(instance.pk)])


def _on_study_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created:
        from evaluation.events import study_group

        announce_access_change(groups=[study_group(instance.pk)])


def _on_study_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    from evaluation.events import study_group

    announce_access_change(groups=[study_group(instance.pk)])


def _on_study_sharing(sender: Any, instance: Any, action: str, reverse: bool, **kwargs: Any) -> None:
    if action not in {"post_remove", "post_clear"}:
        return  # adding a reader takes nothing away from anyone
    if reverse:  # user.shared_studies.remove(...): that user's sockets
        announce_access_change(groups=[user_group(instance.pk)])
    else:
        from evaluation.events import study_group

        announce_access_change(groups=[study_group(instance.pk)])
