"""Names and tags researchers give their runs and studies: one set of rules for both, errors naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from django import forms
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


class LabelsForm(forms.Form):
    """The rename-and-re-tag form of a run or a study page: shape here, rules in the functions above (applied by
    each app's service, whose ValidationError comes back through ``add_service_errors``)."""

    name = forms.CharField(max_length=200)
    tags = forms.CharField(required=False, max_length=2000, help_text="Comma-separated.")

    def __init__(self, data: Any = None, *, name: str, tags: Iterable[str], prefix: str) -> None:
        super().__init__(data, initial={"name": name, "tags": ", ".join(tags)}, prefix=prefix)

    def tag_list(self) -> list[str]:
        return [t.strip() for t in self.cleaned_data.get("tags", "").split(",") if t.strip()]

    def add_service_errors(self, exc: ValidationError) -> None:
        if hasattr(exc, "error_dict"):
            for name, errors in exc.error_dict.items():
                self.add_error(name if name in self.fields else None, errors)
        else:
            self.add_error(None, exc)
