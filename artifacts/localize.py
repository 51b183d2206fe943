"""Resolve artifact URIs in a run's inputs to local files on the worker that runs it. No Django.

The web tier stores URIs; only the host that reads a file knows where it is on its own disk. The GPU
worker (the Celery supervisor or arbiter_worker) downloads `s3://` inputs into a cache under its own
ARTIFACT_ROOT before the engine starts, and turns `file://` into a plain path. A download lands in a
temporary folder and is renamed into place when complete, so a worker killed mid-download never leaves
a half model that the next run would take for a whole one.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from artifacts import uris
from artifacts.store import LocalStore, S3Store

MODEL_FIELDS = (
    "model_name_or_path",
    "ref_model_name_or_path",
    "reward_model_path",
    "rubric_judge_path",
    "process_reward_model_path",
)
DATASET_FIELDS = ("dataset_path", "eval_dataset_path")
INPUT_FIELDS = (*MODEL_FIELDS, *DATASET_FIELDS)


def localize(value: str, *, store: LocalStore | S3Store | None, cache: Path) -> str:
    """A local path for `value`: s3:// is downloaded (once) into `cache`; file:// loses its scheme; else as is."""
    if value.startswith("file://"):
        return str(uris.parse(value).local_path)
    if not value.startswith("s3://"):
        return value
    if store is None or not isinstance(store, S3Store):
        raise uris.BadUri(f"{value}: this worker has no S3 artifact store configured")
    uri = uris.parse(value)
    name = uri.key.rsplit("/", 1)[-1] or "artifact"
    target = cache / hashlib.sha256(str(uri).encode()).hexdigest()[:24] / name
    if target.exists():
        return str(target)
    staging = target.parent / f".{name}.part"
    if staging.exists():
        shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
    listing = store.list(uri)
    if not listing:
        raise FileNotFoundError(f"{value}: no such artifact in the store")
    if any(rel == "" for rel, _ in listing):
        store.get_file(uri, staging)
    else:
        staging.mkdir(parents=True)
        store.get_tree(uri, staging)
    staging.rename(target)
    return str(target)


def localize_config(config: dict[str, Any], *, store: LocalStore | S3Store | None, cache: Path) -> dict[str, Any]:
    """`config` with every model/dataset field made a local path on this host."""
    out = dict(config)
    for field in INPUT_FIELDS:
        value = out.get(field)
        if isinstance(value, str) and value:
            out[field] = localize(value, store=store, cache=cache)
    return out
