"""May this user read this path or URI? The check every run config's model and dataset fields pass at launch.

A value is readable when it is
- an artifact (URI, or a path inside the local store) the launching user may read: their own, a run's
  they can see, a study's shared with them (artifacts.selectors.readable_artifacts);
- a path under a folder an admin configured as a model root (`ARBITER_MODEL_ROOTS`) or dataset root
  (`ARBITER_DATASET_ROOTS`), after symlinks are resolved;
- for model fields, a hub-style model id (`gpt2`, `org/name`) or the built-in `tiny`.

Everything else gets one and the same error per field, whether or not the path exists on any host: the
answer must not tell a researcher which server paths exist (issue 12.1). The engine runs in the run's own
empty working directory, so a hub-style id can never name a folder on the worker by accident.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from artifacts import selectors, uris
from artifacts.localize import DATASET_FIELDS, MODEL_FIELDS

BUILTIN_MODELS = frozenset({"tiny"})
# The hub's own rule for repo ids: an optional namespace, a name; letters, digits, "-", "_", "."; no "--"
# or ".." (huggingface_hub.utils.validate_repo_id), at most 96 characters per part.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")

MODEL_ERROR = (
    "Not a model you may use: give a checkpoint of a run you can see, a path under a model root the admin "
    "configured, or a hub model id (organisation/name)."
)
DATASET_ERROR = (
    "Not a dataset you may use: give a study export or dataset artifact you can read, or a path under a "
    "dataset root the admin configured."
)


def is_hub_id(value: str) -> bool:
    return bool(HUB_ID.match(value)) and "--" not in value and ".." not in value


def store_base() -> uris.Uri:
    """The configured store's base URI (ARTIFACT_STORE_URL, else the local ARTIFACT_ROOT)."""
    configured = str(getattr(settings, "ARTIFACT_STORE_URL", "") or "")
    if configured:
        return uris.parse(configured)
    return uris.parse(os.path.realpath(settings.ARTIFACT_ROOT))


def _roots(name: str) -> list[Path]:
    return [Path(os.path.realpath(r)) for r in getattr(settings, name, []) if r]


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _readable_local(*, user: Any, value: str, roots_setting: str) -> bool:
    raw = value.removeprefix("file://")
    if not raw.startswith("/") or "\x00" in raw:
        return False
    # realpath: a symlink planted inside an allowed folder must not lead out of it.
    real = Path(os.path.realpath(raw))
    local_root = Path(os.path.realpath(settings.ARTIFACT_ROOT))
    if _under(real, local_root):
        # Inside the artifact store: only the artifact rule applies, even if an admin root encloses it.
        return selectors.artifact_covering(user=user, uri=uris.parse(str(real))) is not None
    return any(_under(real, root) for root in _roots(roots_setting))


def may_read(*, user: Any, value: str, model: bool) -> bool:
    """True when `user` may have a run read `value` (a model when `model`, else a dataset)."""
    value = value.strip()
    if not value:
        return True
    if model and (value in BUILTIN_MODELS or is_hub_id(value)):
        return True
    roots_setting = "ARBITER_MODEL_ROOTS" if model else "ARBITER_DATASET_ROOTS"
    if value.startswith("s3://"):
        try:
            uri = uris.parse(value)
        except uris.BadUri:
            return False
        return selectors.artifact_covering(user=user, uri=uri) is not None
    return _readable_local(user=user, value=value, roots_setting=roots_setting)


def check_config_paths(*, user: Any, config: dict[str, Any]) -> None:
    """Raise a ValidationError naming each model/dataset field of `config` the user may not read."""
    errors: dict[str, list[str]] = {}
    for field in (*MODEL_FIELDS, *DATASET_FIELDS):
        value = config.get(field)
        if not isinstance(value, str) or not value:
            continue
        model = field in MODEL_FIELDS
        if not may_read(user=user, value=value, model=model):
            errors[field] = [MODEL_ERROR if model else DATASET_ERROR]
    if errors:
        raise ValidationError(errors)
