"""Which container an upload is (JSON Lines, JSON array, CSV, Parquet; gzip-compressed or not), read as a stream.

Detection looks at the bytes, never only at the file name: a JSON array named `.jsonl` is read as
the array it is. A file that is none of these (a pretty-printed JSON object, a ZIP or Excel file,
UTF-16 text, a CSV without a header naming the fields) gets one message that says what it is,
instead of an error on every line. Rows come out one at a time with the line they start on, so
memory stays bounded whatever the file's size (one row at most MAX_ROW_BYTES; a JSON array is
decoded element by element).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from evaluation.importers.rows import MAX_ROW_BYTES, RowError

READ_CHUNK = 1 << 20
MAX_DECOMPRESSED_BYTES = 4 << 30  # a gzip bomb stops here
MAX_SINGLE_DOCUMENT_BYTES = 256 << 20  # a whole-file JSON object (a leaderboard submission) is decoded at once
RowOrError = tuple[int, dict[str, Any] | RowError]


class ContainerError(Exception):
    """The file as a whole is not something this study can read; the message says what it is."""


@dataclass
class RowStream:
    container: str  # "jsonl" | "json" | "csv" | "parquet" | "json_object"; "+gzip" when compressed
    rows: Iterator[RowOrError]
    position: Callable[[], int]  # bytes of the uploaded file consumed so far (for progress)
    document: dict[str, Any] | None = None  # the whole object, for "json_object"
    header: list[str] | None = None  # CSV column names


def _peek(stream: IO[bytes], n: int) -> bytes:
    if stream.seekable():
        start = stream.tell()
        head = stream.read(n)
        stream.seek(start)
        return head
    peek = getattr(stream, "peek", None)
    if peek is None:
        raise TypeError("an upload must be seekable or buffered")
    peeked: bytes = peek(n)[:n]
    return peeked


def _position_of(raw: IO[bytes]) -> Callable[[], int]:
    def position() -> int:
        try:
            return raw.tell()
        except (OSError, ValueError):
            return 0

    return position


class _Bounded(io.RawIOBase):
    """Refuses to give more than `limit` decompressed bytes (a small .gz can inflate to terabytes)."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, limit: int) -> None:
        self.inner, self.left = inner, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.inner.read(min(len(buffer), self.left + 1))
        except (EOFError, OSError, zlib.error) as exc:  # cut short, or not gzip after its first two bytes
            raise ContainerError(f"the gzip file is damaged or incomplete ({exc})") from None
        if len(data) > self.left:
            raise ContainerError(f"the decompressed file is larger than {MAX_DECOMPRESSED_BYTES >> 30} GiB")
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def open_rows(stream: IO[bytes], *, known_columns: frozenset[str]) -> RowStream:
    """Detect the container of `stream` and return its rows. `known_columns` names the fields a CSV header may use."""
    head = _peek(stream, 8)
    position = _position_of(stream)
    if head.startswith(b"\x1f\x8b"):
        inflated = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=stream, mode="rb"), MAX_DECOMPRESSED_BYTES))
        inner = _open_plain(inflated, known_columns=known_columns, seekable=False)
        inner.container += "+gzip"
        inner.position = position
        return inner
    return _open_plain(stream, known_columns=known_columns, seekable=True)


def _open_plain(stream: IO[bytes], *, known_columns: frozenset[str], seekable: bool) -> RowStream:
    head = _peek(stream, 4096)
    position = _position_of(stream)
    if head.startswith(b"PAR1"):
        if not seekable:
            raise ContainerError("this is a compressed Parquet file; upload the .parquet file itself")
        return RowStream("parquet", _parquet_rows(stream), position)
    if head.startswith(b"PK\x03\x04"):
        raise ContainerError(
            "this is a ZIP archive (an Excel workbook is one too); upload the JSON Lines, JSON, CSV or Parquet file"
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ContainerError("this file is UTF-16 text; save it as UTF-8 and upload it again")
    text_head = head.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="replace").lstrip()
    if not text_head:
        raise ContainerError("the file is empty")
    first = text_head[0]
    if first == "[":
        return RowStream("json", _json_array_rows(stream), position)
    if first == "{":
        return _object_or_lines(stream, seekable=seekable, position=position)
    return _csv_rows(stream, known_columns=known_columns, position=position)


# --------------------------------------------------------------------------- JSON Lines


def _read_line(stream: IO[bytes]) -> bytes | None:
    """One line, at most MAX_ROW_BYTES + 1 bytes of it kept; None at the end."""
    line = stream.readline(MAX_ROW_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_ROW_BYTES and not line.endswith(b"\n"):
        while True:  # drop the rest of an over-long line without holding it
            rest = stream.readline(READ_CHUNK)
            if not rest or rest.endswith(b"\n"):
                break
    return line


def _jsonl_rows(stream: IO[bytes], first_line: int = 1) -> Iterator[RowOrError]:
    line_no = first_line - 1
    while (raw := _read_line(stream)) is not None:
        line_no += 1
        if line_no == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if len(raw) > MAX_ROW_BYTES:
            yield line_no, RowError(line_no, "", f"line is longer than {MAX_ROW_BYTES} bytes")
            continue
        stripped = raw.strip()
        if not stripped:
            continue
        try:
            row = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            yield line_no, RowError(line_no, "", f"not valid JSON ({exc})")
            continue
        if not isinstance(row, dict):
            yield line_no, RowError(line_no, "", "each line must be a JSON object")
            continue
        yield line_no, row


def _object_or_lines(stream: IO[bytes], *, seekable: bool, position: Callable[[], int]) -> RowStream:
    """A file starting with "{": JSON Lines, or one JSON object spread over several lines."""
    start = stream.tell() if seekable else 0
    first = (_read_line(stream) or b"").removeprefix(codecs.BOM_UTF8).strip()
    try:
        if isinstance(orjson.loads(first), dict):
            return RowStream("jsonl", _chain_first(first, stream), position)
    except orjson.JSONDecodeError:
        pass
    # Not one object per line: read the whole document (a submission file, or a mistake).
    rest = stream.read(MAX_SINGLE_DOCUMENT_BYTES + 1)
    if len(rest) > MAX_SINGLE_DOCUMENT_BYTES:
        raise ContainerError(
            f"this is one JSON object larger than {MAX_SINGLE_DOCUMENT_BYTES >> 20} MiB; "
            "upload JSON Lines (one item per line) instead"
        )
    try:
        document = orjson.loads(first + b"\n" + rest)
    except orjson.JSONDecodeError:
        if not seekable:
            raise ContainerError("the first line is not a JSON object, and the file is not one JSON document") from None
        stream.seek(start)
        return RowStream("jsonl", _jsonl_rows(stream), position)
    if not isinstance(document, dict):
        raise ContainerError("the file is not JSON Lines, a JSON array of items, CSV or Parquet")
    return RowStream("json_object", iter(()), position, document=document)


def _chain_first(first: bytes, stream: IO[bytes]) -> Iterator[RowOrError]:
    row = orjson.loads(first)
    yield 1, row
    yield from _jsonl_rows(stream, first_line=2)


# --------------------------------------------------------------------------- JSON array


def _json_array_rows(stream: IO[bytes]) -> Iterator[RowOrError]:
    """Elements of a top-level JSON array, decoded one at a time (json's C scanner on a sliding window)."""
    decoder = json.JSONDecoder()
    incremental = codecs.getincrementaldecoder("utf-8-sig")()
    buf = ""
    pos = 0
    line = 1
    eof = False

    def fill() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = stream.read(READ_CHUNK)
        try:
            text = incremental.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise ContainerError(f"the file is not UTF-8 text ({exc.reason} near byte {exc.start})") from None
        if not chunk:
            eof = True
        buf = buf[pos:] + text
        pos = 0
        return bool(chunk) or bool(text)

    def skip_space() -> None:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < len(buf) or not fill():
                return

    skip_space()
    if pos >= len(buf) or buf[pos] != "[":
        raise ContainerError("the file starts like a JSON array but is not one")
    pos += 1
    index = 0
    while True:
        skip_space()
        if pos >= len(buf):
            raise ContainerError(f"the JSON array is not closed (the file ends after {index} items)")
        if buf[pos] == "]":
            return
        if index > 0:
            if buf[pos] != ",":
                raise ContainerError(f"line {line}: the JSON array needs a comma between items")
            pos += 1
            skip_space()
        start_line = line
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except RecursionError:
                raise ContainerError(f"line {start_line}: an item is nested too deeply to read") from None
            except json.JSONDecodeError as exc:
                if len(buf) - pos > MAX_ROW_BYTES:
                    raise ContainerError(
                        f"line {start_line}: an item is not valid JSON or is longer than {MAX_ROW_BYTES} bytes"
                    ) from None
                if not fill():
                    raise ContainerError(f"line {start_line}: not valid JSON ({exc.msg})") from None
                continue
            break
        line += buf.count("\n", pos, end)
        pos = end
        index += 1
        if index == 1 and not isinstance(value, dict):
            kind = type(value).__name__
            raise ContainerError(f"this is a JSON array of {kind} values, not of objects (one per item)")
        if not isinstance(value, dict):
            yield start_line, RowError(start_line, "", "each item must be a JSON object")
        else:
            yield start_line, value


# --------------------------------------------------------------------------- CSV


def _csv_rows(stream: IO[bytes], *, known_columns: frozenset[str], position: Callable[[], int]) -> RowStream:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="", errors="strict")
    csv.field_size_limit(MAX_ROW_BYTES)
    try:
        sample = text.readline()
    except UnicodeDecodeError:
        text.detach()  # a wrapper that is collected closes the caller's file
        raise ContainerError("the file is not UTF-8 text (nor Parquet or gzip)") from None
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel_tab if sample.count("\t") > sample.count(",") else csv.excel
    header = next(csv.reader([sample], dialect), [])
    names = [h.strip() for h in header]
    if not known_columns.intersection(names):
        text.detach()
        shown = sample.strip()[:80]
        raise ContainerError(
            "this is not JSON Lines, a JSON array, Parquet, or CSV with a header row naming the fields "
            f"({', '.join(sorted(known_columns)[:8])}…); its first line reads {shown!r}"
        )
    reader = csv.reader(text, dialect)
    return RowStream("csv", _csv_records(reader, names, text), position, header=names)


def _csv_records(reader: Any, names: list[str], text: io.TextIOWrapper) -> Iterator[RowOrError]:
    try:
        yield from _csv_record_loop(reader, names)
    finally:
        text.detach()


def _csv_record_loop(reader: Any, names: list[str]) -> Iterator[RowOrError]:
    # The header line was read before this reader started: its line numbers are one behind the file's.
    line = 1
    while True:
        start = line + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise ContainerError(f"line {start}: the file is not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            line = reader.line_num + 1
            yield start, RowError(start, "", f"not valid CSV ({exc})")
            continue
        line = reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue
        if len(record) > len(names):
            yield start, RowError(start, "", f"has {len(record)} cells but the header names {len(names)} columns")
            continue
        yield start, {name: cell for name, cell in zip(names, record, strict=False) if name}


# --------------------------------------------------------------------------- Parquet


def _parquet_rows(stream: IO[bytes]) -> Iterator[RowOrError]:
    import pyarrow.parquet as pq  # imported here: only Parquet uploads pay for it

    try:
        parquet = pq.ParquetFile(stream)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ContainerError(f"this looks like Parquet but cannot be read ({exc})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=1000):
        for record in batch.to_pylist():
            row += 1
            yield row, {k: v for k, v in record.items() if v is not None}
