"""Study item uploads: detect the container, read rows as a stream, turn each into an item or an error naming
its line and field. No Django: the import service (evaluation.services.imports) decides what to store.

`parse_upload` streams (bounded memory, for files of any size); `parse_all` collects everything of a
small upload in memory (tests, a single item typed into a form).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from evaluation.importers import stwebagentbench
from evaluation.importers.containers import ContainerError, open_rows
from evaluation.importers.kinds import COLUMNS, KINDS, csv_cells, kind_of, parse_row, validate_expected
from evaluation.importers.rows import (
    MAX_ERRORS,
    MAX_ROW_BYTES,
    Parsed,
    ParsedAttachment,
    ParsedItem,
    ParseResult,
    RowError,
    RowInvalid,
)

__all__ = [
    "KINDS",
    "MAX_ERRORS",
    "MAX_ROW_BYTES",
    "ContainerError",
    "ParseResult",
    "Parsed",
    "ParsedAttachment",
    "ParsedItem",
    "RowError",
    "RowInvalid",
    "Upload",
    "kind_of",
    "parse_all",
    "parse_jsonl",
    "parse_upload",
    "validate_expected",
]

CONTAINER_NAMES = {
    "jsonl": "JSON Lines",
    "json": "JSON array",
    "csv": "CSV",
    "parquet": "Parquet",
    "json_object": "JSON document",
    "submission": "ST-WebAgentBench leaderboard submission",
    "evaluator_csv": "ST-WebAgentBench evaluator output (CSV)",
}


@dataclass
class Upload:
    container: str
    records: Iterator[Parsed | RowError]
    position: Callable[[], int]

    @property
    def container_name(self) -> str:
        base, _, compressed = self.container.partition("+")
        name = CONTAINER_NAMES.get(base, base)
        return f"{name} (gzip)" if compressed else name


def parse_upload(source: bytes | IO[bytes], *, kind: str, flag_unsplittable: bool = False) -> Upload:
    """Open an upload; raises ContainerError (one message) when the file as a whole is not readable."""
    if kind not in KINDS:
        raise ValueError(f"unknown study kind {kind!r}")
    stream: IO[bytes] = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    rows = open_rows(stream, known_columns=COLUMNS[kind])
    base, _, compressed = rows.container.partition("+")
    suffix = f"+{compressed}" if compressed else ""
    if base == "json_object":
        document = rows.document or {}
        if kind == "violation" and stwebagentbench.is_submission(document):
            return Upload("submission" + suffix, stwebagentbench.submission_rows(document), rows.position)
        keys = ", ".join(list(document)[:6])
        raise ContainerError(
            f"this is one JSON object (keys: {keys}) spread over several lines, not JSON Lines (one item per "
            "line) nor a JSON array of items"
            + ("; a leaderboard submission goes to a violation study" if "task_evidence" in document else "")
        )
    if base == "csv":
        header = set(rows.header or [])
        if header >= stwebagentbench.EVALUATOR_COLUMNS:
            if kind != "violation":
                raise ContainerError("this is ST-WebAgentBench evaluator output; upload it to a violation study")
            return Upload("evaluator_csv" + suffix, stwebagentbench.evaluator_rows(rows.rows), rows.position)
        if kind == "violation":
            missing = ", ".join(sorted(stwebagentbench.EVALUATOR_COLUMNS - header))
            raise ContainerError(
                "a CSV for a violation study must be ST-WebAgentBench's evaluator output "
                f"(*_full_res.csv; missing columns: {missing}); tasks and trajectories come as JSON, JSON Lines "
                "or Parquet"
            )
    csv_input = base == "csv"

    def records() -> Iterator[Parsed | RowError]:
        for line, row in rows.rows:
            if isinstance(row, RowError):
                yield row
                continue
            try:
                yield parse_row(kind, csv_cells(kind, row) if csv_input else row, line, flag=flag_unsplittable)
            except RowInvalid as exc:
                yield RowError(line, exc.field, exc.message)

    return Upload(rows.container, records(), rows.position)


def parse_all(source: bytes | IO[bytes], *, kind: str, flag_unsplittable: bool = False) -> ParseResult:
    """Every record of a small upload, in memory; a container problem is one error on line 0."""
    result = ParseResult()
    try:
        upload = parse_upload(source, kind=kind, flag_unsplittable=flag_unsplittable)
        result.container = upload.container
        for record in upload.records:
            if isinstance(record, RowError):
                result.add_error(record)
            elif isinstance(record, ParsedAttachment):
                result.attachments.append(record)
            else:
                result.items.append(record)
    except ContainerError as exc:
        result.add_error(RowError(0, "", str(exc)))
        return result
    if not result.items and not result.attachments and not result.error_count:
        result.add_error(RowError(0, "", "the file has no items"))
    return result


# Kept for callers that predate the other containers: it reads any of them.
parse_jsonl = parse_all
