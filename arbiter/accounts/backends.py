"""Authentication backend that reads the session's user from the cache instead of the database."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from arbiter.accounts.models import User

USER_CACHE_SECONDS = 30


def user_cache_key(user_id: Any) -> str:
    return f"auth:user:{user_id}"


class CachedModelBackend(ModelBackend):
    """`get_user` runs on every authenticated request; a cached copy saves one query each time.

    Saving or deleting a user drops the cached copy at once; changes that bypass signals (a queryset
    `update()`) are seen within USER_CACHE_SECONDS. Deactivation is honoured through `user_can_authenticate`
    on the cached copy, so a deactivated user is logged out at the latest after that delay.
    """

    def get_user(self, user_id: Any) -> User | None:
        key = user_cache_key(user_id)
        user = cache.get(key)
        if user is None:
            user = super().get_user(user_id)
            if user is not None:
                cache.set(key, user, USER_CACHE_SECONDS)
        return user if user is not None and self.user_can_authenticate(user) else None


@receiver(post_save, sender=User)
@receiver(post_delete, sender=User)
def _forget_cached_user(sender: type[User], instance: User, **kwargs: Any) -> None:
    cache.delete(user_cache_key(instance.pk))
