"""Parsing of the studies API's JSON bodies: each value checked for type and range, a refusal names its field.

The ranges are the study form's (evaluation.forms.StudyForm) and the model's constraints, so a study made
over the API could have been made in the browser. Unknown fields are refused rather than ignored: a
misspelt setting (`overlapp`) would otherwise create a study the script did not ask for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from evaluation.models import ExportFormat, RewardStyle, StudyKind, TextFormat
from training.payloads import PayloadError

MAX_NAME = 200  # Study.name
MAX_INSTRUCTIONS = 100_000
MAX_USERNAME = 150  # Django's username length
MAX_USERS = 1000
MAX_LABEL = 200
MIN_SCALE, MAX_SCALE = 2, 11  # StudyForm.clean_scale_text
MAX_OVERLAP = 50  # study_overlap_range
MIN_LEASE, MAX_LEASE = 10, 2**31 - 1  # study_lease_min; PositiveIntegerField
MAX_FILENAME = 255  # ImportJob.filename


@dataclass(frozen=True)
class NewStudy:
    name: str
    kind: str
    instructions: str = ""
    text_format: str = TextFormat.PLAIN
    overlap: int = 1
    lease_seconds: int = 900
    accuracy_threshold: float = 0.7
    scale_labels: list[str] = field(default_factory=list)
    annotators: list[str] = field(default_factory=list)
    shared_with: list[str] = field(default_factory=list)


NEW_STUDY_FIELDS = frozenset(NewStudy.__dataclass_fields__)


def _object(body: Any, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    for name in body:
        if name not in fields:
            raise PayloadError(str(name)[:100], f"unknown field (expected one of {', '.join(sorted(fields))})")
    return body


def _text(value: Any, name: str, *, max_length: int, required: bool = False) -> str:
    if not isinstance(value, str):
        raise PayloadError(name, "must be a string")
    if "\x00" in value:
        raise PayloadError(name, "must not contain NUL characters")
    if len(value) > max_length:
        raise PayloadError(name, f"must be at most {max_length} characters")
    if required and not value.strip():
        raise PayloadError(name, "must not be empty")
    return value


def _integer(value: Any, name: str, *, lo: int, hi: int) -> int:
    # bool is an int in Python, and 3.0 is not an integer in JSON's sense for a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(name, "must be an integer")
    if not lo <= value <= hi:
        raise PayloadError(name, f"must be between {lo} and {hi}")
    return int(value)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(name, "must be a number")
    if not 0 <= value <= 1:
        raise PayloadError(name, "must be between 0 and 1")
    return float(value)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise PayloadError(name, "must be true or false")
    return value


def _choice(value: Any, name: str, choices: list[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise PayloadError(name, f"must be one of {', '.join(choices)}")
    return value


def usernames(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise PayloadError(name, "must be a list of usernames")
    if len(value) > MAX_USERS:
        raise PayloadError(name, f"at most {MAX_USERS} usernames")
    out: list[str] = []
    for i, username in enumerate(value):
        text = _text(username, f"{name}[{i}]", max_length=MAX_USERNAME, required=True)
        if text not in out:
            out.append(text)
    return out


def parse_new_study(body: Any) -> NewStudy:
    data = _object(body, NEW_STUDY_FIELDS)
    if "name" not in data:
        raise PayloadError("name", "is required")
    if "kind" not in data:
        raise PayloadError("kind", "is required")
    kind = _choice(data["kind"], "kind", StudyKind.values)
    labels: list[str] = []
    if "scale_labels" in data:
        raw = data["scale_labels"]
        if not isinstance(raw, list):
            raise PayloadError("scale_labels", "must be a list of labels, lowest first")
        if raw and kind != StudyKind.RATING:
            raise PayloadError("scale_labels", "only rating studies have a scale")
        labels = [
            _text(label, f"scale_labels[{i}]", max_length=MAX_LABEL, required=True).strip()
            for i, label in enumerate(raw[: MAX_SCALE + 1])
        ]
        if labels and not MIN_SCALE <= len(raw) <= MAX_SCALE:
            raise PayloadError("scale_labels", f"a scale has {MIN_SCALE} to {MAX_SCALE} points")
    return NewStudy(
        name=_text(data["name"], "name", max_length=MAX_NAME, required=True).strip(),
        kind=kind,
        instructions=_text(data.get("instructions", ""), "instructions", max_length=MAX_INSTRUCTIONS),
        text_format=_choice(data.get("text_format", TextFormat.PLAIN), "text_format", TextFormat.values),
        overlap=_integer(data.get("overlap", 1), "overlap", lo=1, hi=MAX_OVERLAP),
        lease_seconds=_integer(data.get("lease_seconds", 900), "lease_seconds", lo=MIN_LEASE, hi=MAX_LEASE),
        accuracy_threshold=_fraction(data.get("accuracy_threshold", 0.7), "accuracy_threshold"),
        scale_labels=labels,
        annotators=usernames(data.get("annotators", []), "annotators"),
        shared_with=usernames(data.get("shared_with", []), "shared_with"),
    )


def parse_annotator_change(body: Any) -> tuple[list[str], list[str]]:
    """`{"add": [usernames], "remove": [usernames]}`, either may be left out."""
    data = _object(body, frozenset({"add", "remove"}))
    return usernames(data.get("add", []), "add"), usernames(data.get("remove", []), "remove")


@dataclass(frozen=True)
class ExportRequest:
    format: str
    keep_ties: bool
    style: str


def parse_export(body: Any) -> ExportRequest:
    """The export form's fields: format, keep_ties, style."""
    data = _object(body, frozenset({"format", "keep_ties", "style"}))
    return ExportRequest(
        format=_choice(data.get("format", ExportFormat.REWARD), "format", ExportFormat.values),
        keep_ties=_boolean(data.get("keep_ties", False), "keep_ties"),
        style=_choice(data.get("style", RewardStyle.AUTO), "style", RewardStyle.values),
    )


def query_flag(raw: str | None, name: str) -> bool:
    """A true/false query parameter (`?import_valid_rows=true`); absent is false."""
    if raw is None or raw == "":
        return False
    value = raw.strip().lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    raise PayloadError(name, "must be true or false")


def filename(raw: str | None) -> str:
    if raw is None:
        return ""
    return _text(raw, "filename", max_length=MAX_FILENAME)
