"""Artifact URIs (`file:///abs/path`, `s3://bucket/key`): parsing and canonical spelling. No Django.

One spelling per artifact, so a lookup is an equality (or a prefix: a checkpoint folder's URI covers the
files inside it). Canonical: no `.`/`..` segments, no empty segments, no trailing slash.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("file", "s3")


class BadUri(ValueError):
    """Not a URI this store understands (or one that tries to climb out of its place with `..`)."""


@dataclass(frozen=True)
class Uri:
    scheme: str  # "file" | "s3"
    bucket: str  # "" for file
    key: str  # file: absolute path; s3: key without a leading slash

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.key}"
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def child(self, *parts: str) -> Uri:
        """This URI with path segments appended (each must be a plain name)."""
        for part in parts:
            for seg in part.split("/"):
                if seg in {"", ".", ".."}:
                    raise BadUri(f"bad path segment {seg!r}")
        joined = "/".join([self.key.rstrip("/"), *parts]) if self.key else "/".join(parts)
        return Uri(self.scheme, self.bucket, joined)

    def contains(self, other: Uri) -> bool:
        """True when `other` is this URI or lies under it."""
        if (self.scheme, self.bucket) != (other.scheme, other.bucket):
            return False
        if not self.key or self.key == "/":
            return True
        return other.key == self.key or other.key.startswith(self.key.rstrip("/") + "/")

    def ancestors(self) -> list[str]:
        """This URI and every folder above it, as strings (for an `uri IN (...)` lookup)."""
        out = [str(self)]
        key = self.key
        while True:
            parent = posixpath.dirname(key.rstrip("/"))
            if not parent or parent == key or parent == "/":
                break
            out.append(str(Uri(self.scheme, self.bucket, parent)))
            key = parent
        return out

    @property
    def local_path(self) -> Path:
        if self.scheme != "file":
            raise BadUri(f"{self} is not a local file URI")
        return Path(self.key)


def _clean_key(raw: str, *, absolute: bool) -> str:
    if "\x00" in raw:
        raise BadUri("NUL in path")
    segments = [s for s in raw.split("/") if s not in {"", "."}]
    if ".." in segments:
        raise BadUri("'..' is not allowed in an artifact URI")
    body = "/".join(segments)
    return "/" + body if absolute else body


def parse(value: str) -> Uri:
    """A URI from `file://…` / `s3://…`, or from an absolute local path (which becomes `file://`)."""
    if value.startswith("file://"):
        rest = value.removeprefix("file://")
        if not rest.startswith("/"):
            raise BadUri("a file URI needs an absolute path (file:///…)")
        return Uri("file", "", _clean_key(rest, absolute=True))
    if value.startswith("s3://"):
        bucket, _, key = value.removeprefix("s3://").partition("/")
        if not bucket or not all(c.isalnum() or c in ".-_" for c in bucket):
            raise BadUri("an s3 URI needs a bucket name (s3://bucket/key)")
        return Uri("s3", bucket, _clean_key(key, absolute=False))
    if value.startswith("/"):
        return Uri("file", "", _clean_key(value, absolute=True))
    raise BadUri("an artifact is named by a file://, s3:// URI or an absolute path")


def file_uri(path: Path | str) -> str:
    """The canonical file URI of a local path (made absolute, not resolved: callers resolve symlinks first)."""
    return str(parse(str(Path(path).absolute())))


def is_uri(value: str) -> bool:
    return value.startswith(tuple(f"{s}://" for s in SCHEMES))
