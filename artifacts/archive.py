"""A stored folder as a zip stream, built while it is sent: a checkpoint of many GB never sits in memory or on disk
on the web host. No Django."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

from artifacts import uris
from artifacts.store import CHUNK, LocalStore, S3Store


class _Sink(io.RawIOBase):
    """A write-only, non-seekable stream whose bytes are taken out as they come (zipfile writes data descriptors)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def zip_stream(
    store: LocalStore | S3Store, uri: uris.Uri, *, folder: str, listing: list[tuple[str, int]] | None = None
) -> Iterator[bytes]:
    """The files under `uri` as a zip (stored, not deflated: weights do not compress) with paths under `folder/`.
    `listing`: the store's listing of `uri` when the caller has it already (one LIST of a bucket, not two).

    Files gone by the time the zip is built (deleted after the view looked) raise FileNotFoundError, before or
    while they would be read: the download then ends short and the browser says it failed, never a complete zip
    that silently lacks them."""
    listing = sorted(store.list(uri) if listing is None else listing)
    if not listing:
        raise FileNotFoundError(f"no files under {uri} any more")
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for rel, size in listing:
            info = zipfile.ZipInfo(f"{folder}/{rel}" if rel else folder)
            info.compress_type = zipfile.ZIP_STORED
            with (
                store.open(uri.child(rel) if rel else uri) as source,
                archive.open(info, "w", force_zip64=size >= 2**31) as target,
            ):
                while block := source.read(CHUNK):
                    target.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()
