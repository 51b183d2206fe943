"""Writes of the artifact store's records: register what was stored, resolve where a run's files go."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction

from artifacts import uris
from artifacts.access import store_base
from artifacts.models import Artifact, ArtifactKind
from artifacts.store import LocalStore, S3Store, Stored, open_store, run_location

if TYPE_CHECKING:
    from evaluation.models import ExportJob, Study
    from training.models import Run


class OutsideRunLocation(ValueError):
    """A run reported a file outside its own artifact location."""


def canonical_uri(value: str) -> uris.Uri:
    """The canonical URI of a reported path or URI; a local path has its symlinks resolved (realpath)."""
    if value.startswith("s3://"):
        return uris.parse(value)
    local = value.removeprefix("file://")
    if not local.startswith("/"):
        raise uris.BadUri("must be an absolute path or a file:// or s3:// URI")
    return uris.parse(os.path.realpath(local))


def default_store() -> LocalStore | S3Store:
    """The configured store: the local ARTIFACT_ROOT, or the S3-compatible bucket of ARTIFACT_STORE_URL."""
    return open_store(str(store_base()), endpoint_url=getattr(settings, "ARTIFACT_S3_ENDPOINT_URL", "") or None)


def is_remote() -> bool:
    """True when artifacts live in a bucket rather than in this host's ARTIFACT_ROOT."""
    return store_base().scheme != "file"


def local_root() -> Path:
    return Path(os.path.realpath(settings.ARTIFACT_ROOT))


def publish(local: Path) -> tuple[str, Stored]:
    """Put a file or folder written under ARTIFACT_ROOT into the store, at the same relative key.

    Returns what rows keep as its name (the local path when the store is ARTIFACT_ROOT itself, so the
    embedded layout is unchanged; the s3:// URI otherwise) and what was stored. A remote store's copy is
    the only one kept: the local staging file is removed.
    """
    real = Path(os.path.realpath(local))
    relative = real.relative_to(local_root())
    uri = store_base().child(*relative.parts)
    store = default_store()
    stored = store.put_tree(real, uri) if real.is_dir() else store.put_file(real, uri)
    if not is_remote():
        return str(local), stored
    if real.is_dir():
        import shutil

        shutil.rmtree(real, ignore_errors=True)
    else:
        real.unlink(missing_ok=True)
    return str(uri), stored


def remove(value: str) -> None:
    """Delete a stored file or folder named by a row (a local path or a URI), never outside the store.

    The name is taken as written, symlinks NOT resolved: a run's folder (or a checkpoint inside it) that its own
    code replaced with a link to another run's folder must lose the link, not the other run's files (the store's
    delete unlinks a symlink and refuses a path that passes through one).
    """
    try:
        uri = uris.parse(value)
    except uris.BadUri:
        return
    if store_base().contains(uri) and str(uri) != str(store_base()):
        default_store().delete(uri)


def stored_size(uri: uris.Uri) -> int:
    """Bytes stored at `uri` (a file, or every file of a folder); 0 when nothing is there."""
    return sum(size for _, size in default_store().list(uri))


def download_url(value: str, *, filename: str = "", expires_s: int = 300) -> str:
    """A short-lived signed URL of an object in the bucket (the browser downloads from the store directly)."""
    # Signed for the address browsers reach the bucket by (the host is part of the signature), which inside a
    # compose network differs from the one the web tier uses (http://minio:9000).
    public = getattr(settings, "ARTIFACT_S3_PUBLIC_URL", "") or None
    store = open_store(str(store_base()), endpoint_url=public) if public else default_store()
    if not isinstance(store, S3Store):
        raise uris.BadUri("signed URLs exist only for an S3 store")
    return store.presigned_url(uris.parse(value), expires_s=expires_s, filename=filename)


def run_uri(*, run_id: int) -> uris.Uri:
    """The store location of one run (`<store>/runs/<id>`)."""
    return run_location(store_base(), run_id)


def checkpoint_uri(*, run: Run, value: str) -> uris.Uri:
    """The URI of a checkpoint a run reports; it must lie inside the run's own location (issue 12.3)."""
    uri = canonical_uri(value)
    if not run_uri(run_id=run.id).contains(uri) or str(uri) == str(run_uri(run_id=run.id)):
        raise OutsideRunLocation(f"must lie inside this run's artifact location ({run_uri(run_id=run.id)}/…)")
    return uri


@transaction.atomic
def register_artifact(
    *,
    owner: Any,
    kind: ArtifactKind,
    uri: str,
    size: int = 0,
    sha256: str = "",
    run: Run | None = None,
    study: Study | None = None,
    export: ExportJob | None = None,
) -> Artifact:
    """Record (or update) the artifact at `uri`; idempotent on the URI (a re-sent report changes nothing new)."""
    artifact, _ = Artifact.objects.update_or_create(
        uri=str(uris.parse(uri)),
        defaults={
            "owner": owner,
            "kind": kind,
            "size": max(0, int(size)),
            "sha256": sha256,
            "run": run,
            "study": study,
            "export": export,
        },
    )
    return artifact
