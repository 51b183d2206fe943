"""A user's pinned chart panels: which metric charts come first on every run page, and in what order."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from arbiter.accounts.models import User
from training.models import PinnedPanel

MAX_PINS = 50
MAX_KEY_LENGTH = 200


def clean_pins(raw: Any) -> list[str]:
    """The body's `keys`: a list of distinct metric names, at most MAX_PINS, each a non-empty string."""
    if not isinstance(raw, list):
        raise ValidationError({"keys": "Expected a list of metric names."})
    if len(raw) > MAX_PINS:
        raise ValidationError({"keys": f"At most {MAX_PINS} pinned panels ({len(raw)} given)."})
    keys: list[str] = []
    for i, key in enumerate(raw):
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
            raise ValidationError({f"keys[{i}]": f"A metric name of 1 to {MAX_KEY_LENGTH} characters, without NUL."})
        if key in keys:
            raise ValidationError({f"keys[{i}]": f"{key!r} is listed twice."})
        keys.append(key)
    return keys


def pinned_keys(*, user: User) -> list[str]:
    return list(PinnedPanel.objects.filter(user=user).order_by("position").values_list("key", flat=True))


@transaction.atomic
def set_pins(*, user: User, keys: list[str]) -> list[str]:
    """Replace the user's pins with `keys`, in that order (the page sends its whole list after each change)."""
    PinnedPanel.objects.filter(user=user).delete()
    PinnedPanel.objects.bulk_create([PinnedPanel(user=user, key=k, position=i) for i, k in enumerate(keys)])
    return keys
