"""The artifact store: one place for datasets, exports, checkpoints and sample sets, addressed by URI. No Django.

`file://` — a folder on this host (ARTIFACT_ROOT by default: embedded mode, or a shared filesystem).
`s3://`   — any S3-compatible bucket (AWS S3, MinIO, Ceph, R2) through boto3.

Why boto3 on both sides, and not django-storages on the web and something else on the worker: the GPU
worker and the engine are Django-free, and a checkpoint is a folder, not a Django `File`. One small module
used by the web tier, the worker and the engine means one behaviour, tested once against a real
S3-compatible server (tests/artifacts). boto3's transfer manager does multipart uploads and parallel
ranged downloads of large weights files; credentials come from the standard AWS variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` or `ARTIFACT_S3_ENDPOINT_URL`), so a
worker's IAM role or a MinIO key work the same way. Presigned URLs would spare the worker credentials,
but a checkpoint folder's file names are not known before it is written; they are used for browser
downloads instead (the web tier redirects to a short-lived URL rather than streaming weights itself).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from artifacts import uris

CHUNK = 1 << 20


@dataclass(frozen=True)
class Stored:
    """What a put wrote: its URI, bytes and (for a single file) SHA-256."""

    uri: str
    size: int
    sha256: str = ""


class Store(Protocol):
    base: uris.Uri

    def put_file(self, local: Path, uri: uris.Uri) -> Stored: ...
    def put_tree(self, local: Path, uri: uris.Uri) -> Stored: ...
    def get_file(self, uri: uris.Uri, local: Path) -> Path: ...
    def get_tree(self, uri: uris.Uri, local: Path) -> Path: ...
    def open(self, uri: uris.Uri) -> IO[bytes]: ...
    def exists(self, uri: uris.Uri) -> bool: ...
    def is_dir(self, uri: uris.Uri) -> bool: ...
    def list(self, uri: uris.Uri) -> list[tuple[str, int]]: ...
    def delete(self, uri: uris.Uri) -> None: ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _tree_files(local: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(local.rglob("*")):
        if path.is_file() and not path.is_symlink():  # a symlink could point anywhere on the host
            yield path, path.relative_to(local).as_posix()


class LocalStore:
    """Artifacts as files under one folder (ARTIFACT_ROOT)."""

    def __init__(self, base: uris.Uri) -> None:
        if base.scheme != "file":
            raise uris.BadUri("LocalStore needs a file:// base")
        self.base = base

    def _path(self, uri: uris.Uri) -> Path:
        if not self.base.contains(uri):
            raise uris.BadUri(f"{uri} is outside the store {self.base}")
        return uri.local_path

    def put_file(self, local: Path, uri: uris.Uri) -> Stored:
        target = self._path(uri)
        if local.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(local, tmp)
            tmp.replace(target)
        return Stored(str(uri), target.stat().st_size, file_sha256(target))

    def put_tree(self, local: Path, uri: uris.Uri) -> Stored:
        target = self._path(uri)
        size = 0
        for path, rel in _tree_files(local):
            size += path.stat().st_size
            if local.resolve() != target.resolve():
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
        return Stored(str(uri), size)

    def get_file(self, uri: uris.Uri, local: Path) -> Path:
        source = self._path(uri)
        if source.resolve() == local.resolve():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, local)
        return local

    def get_tree(self, uri: uris.Uri, local: Path) -> Path:
        source = self._path(uri)
        if source.resolve() != local.resolve():
            shutil.copytree(source, local, dirs_exist_ok=True, symlinks=False)
        return local

    def open(self, uri: uris.Uri) -> IO[bytes]:
        return self._path(uri).open("rb")

    def exists(self, uri: uris.Uri) -> bool:
        return self._path(uri).exists()

    def is_dir(self, uri: uris.Uri) -> bool:
        return self._path(uri).is_dir()

    def list(self, uri: uris.Uri) -> list[tuple[str, int]]:
        root = self._path(uri)
        if root.is_file():
            return [("", root.stat().st_size)]
        return [(rel, path.stat().st_size) for path, rel in _tree_files(root)] if root.is_dir() else []

    def delete(self, uri: uris.Uri) -> None:
        """Delete the file or folder at `uri` itself, never what a symlink there points to.

        A symlink at `uri` is unlinked (its target is untouched); a path that passes through a symlinked folder
        below the store's base is refused (deleting "inside" it would delete inside the link's target). rmtree
        does not follow links inside the tree (Python's fd-based rmtree).
        """
        path = self._path(uri)
        base = self.base.local_path
        folder = base
        for part in path.relative_to(base).parts[:-1]:
            folder = folder / part
            if folder.is_symlink():
                raise uris.BadUri(f"{uri} passes through the symlink {folder}: not deleted")
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


class S3Store:
    """Artifacts as objects in an S3-compatible bucket; a folder is every key under `prefix/`."""

    def __init__(self, base: uris.Uri, *, endpoint_url: str | None = None, client: Any = None) -> None:
        if base.scheme != "s3":
            raise uris.BadUri("S3Store needs an s3:// base")
        self.base = base
        if client is None:
            import boto3  # imported here: the embedded (file://) platform never needs it
            from botocore.config import Config

            endpoint = endpoint_url or os.environ.get("ARTIFACT_S3_ENDPOINT_URL") or None
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
            )
        self.client = client

    def _key(self, uri: uris.Uri) -> str:
        if not self.base.contains(uri):
            raise uris.BadUri(f"{uri} is outside the store {self.base}")
        return uri.key

    def put_file(self, local: Path, uri: uris.Uri) -> Stored:
        sha = file_sha256(local)
        self.client.upload_file(str(local), uri.bucket, self._key(uri), ExtraArgs={"Metadata": {"sha256": sha}})
        return Stored(str(uri), local.stat().st_size, sha)

    def put_tree(self, local: Path, uri: uris.Uri) -> Stored:
        key = self._key(uri)
        size = 0
        for path, rel in _tree_files(local):
            self.client.upload_file(str(path), uri.bucket, f"{key}/{rel}")
            size += path.stat().st_size
        return Stored(str(uri), size)

    def get_file(self, uri: uris.Uri, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        self.client.download_file(uri.bucket, self._key(uri), str(tmp))
        tmp.replace(local)
        return local

    def get_tree(self, uri: uris.Uri, local: Path) -> Path:
        for rel, _size in self.list(uri):
            if rel:
                self.get_file(uri.child(rel), local / rel)
        return local

    def open(self, uri: uris.Uri) -> IO[bytes]:
        body: IO[bytes] = self.client.get_object(Bucket=uri.bucket, Key=self._key(uri))["Body"]
        return body

    def exists(self, uri: uris.Uri) -> bool:
        return bool(self.list(uri))

    def is_dir(self, uri: uris.Uri) -> bool:
        return any(rel for rel, _ in self.list(uri))

    def list(self, uri: uris.Uri) -> list[tuple[str, int]]:
        """("", size) for an object at the URI itself; (relative key, size) for each object under it."""
        key = self._key(uri)
        out: list[tuple[str, int]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=uri.bucket, Prefix=key):
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if name == key:
                    out.append(("", int(obj["Size"])))
                elif name.startswith(key.rstrip("/") + "/"):
                    out.append((name[len(key.rstrip("/")) + 1 :], int(obj["Size"])))
        return out

    def delete(self, uri: uris.Uri) -> None:
        key = self._key(uri)
        names = [key] + [f"{key}/{rel}" for rel, _ in self.list(uri) if rel]
        for i in range(0, len(names), 1000):
            objects = [{"Key": n} for n in names[i : i + 1000]]
            self.client.delete_objects(Bucket=uri.bucket, Delete={"Objects": objects, "Quiet": True})

    def presigned_url(self, uri: uris.Uri, *, expires_s: int = 300, filename: str = "") -> str:
        params: dict[str, str] = {"Bucket": uri.bucket, "Key": self._key(uri)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
        return url


def open_store(base: str, *, endpoint_url: str | None = None) -> LocalStore | S3Store:
    """The store a base URI names (`file:///srv/artifacts`, `s3://bucket/prefix`)."""
    uri = uris.parse(base)
    if uri.scheme == "s3":
        return S3Store(uri, endpoint_url=endpoint_url)
    return LocalStore(uri)


def run_location(base: uris.Uri, run_id: int) -> uris.Uri:
    """Where one run's checkpoints and final model live: every checkpoint it reports must lie inside."""
    return base.child("runs", str(int(run_id)))
