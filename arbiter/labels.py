"""Names and tags researchers give their runs and studies: one set of rules for both, errors naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.core.exceptions import ValidationError

MAX_TAGS = 20
MAX_TAG_LENGTH = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_name(name: str, *, field: str = "name", max_length: int = 200) -> str:
    name = name.strip()
    if not name:
        raise ValidationError({field: "A name cannot be empty."})
    if _CONTROL.search(name):
        raise ValidationError({field: "A name cannot contain control characters."})
    if len(name) > max_length:
        raise ValidationError({field: f"At most {max_length} characters ({len(name)} given)."})
    return name


def clean_tags(tags: Iterable[str], *, field: str = "tags") -> list[str]:
    names = sorted({t.strip() for t in tags if t.strip()})
    for name in names:
        if _CONTROL.search(name):
            raise ValidationError({field: "A tag cannot contain control characters."})
        if len(name) > MAX_TAG_LENGTH:
            raise ValidationError({field: f"Tag {name[:20]!r}… is longer than {MAX_TAG_LENGTH} characters."})
    if len(names) > MAX_TAGS:
        raise ValidationError({field: f"At most {MAX_TAGS} tags ({len(names)} given)."})
    return names
