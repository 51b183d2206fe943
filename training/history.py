"""A run's full history in the three formats scripts read: columnar JSON, CSV and Parquet (no database).

JSON keeps each series as its own columns (`steps`, `values`, `times`), because series of one run
have different steps. CSV and Parquet are one long table, `key, step, value, time`, one row a point:
what pandas, DuckDB and spreadsheets read without reshaping. Every float is written in its shortest
round-trip form (orjson, Arrow), so a value read back is the value logged, bit for bit.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from arbiter.csv_cells import safe_cell
from training.selectors import SeriesColumns

FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def as_json(*, run_id: int, series: list[SeriesColumns], start: int | None, end: int | None) -> bytes:
    body: dict[str, Any] = {
        "run": run_id,
        "start": start,
        "end": end,
        "total": sum(len(c.steps) for c in series),
        "series": [{"key": c.key, "steps": c.steps, "values": c.values, "times": c.times} for c in series],
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def as_table(series: list[SeriesColumns], *, for_spreadsheet: bool = False) -> pa.Table:
    # Metric keys are user text and may start with "=", "+", "-" or "@": in a CSV they are escaped (OWASP
    # CSV injection, arbiter/csv_cells.py); Parquet keeps them as they are.
    names = [safe_cell(c.key) if for_spreadsheet else c.key for c in series]
    counts = np.array([len(c.steps) for c in series], dtype=np.int32)
    # The key column is dictionary-encoded: one string per series, an int per row.
    keys = pa.DictionaryArray.from_arrays(
        pa.array(np.repeat(np.arange(len(names), dtype=np.int32), counts)), pa.array(names, type=pa.string())
    )

    def cat(field: str, dtype: Any) -> np.ndarray:
        parts = [getattr(c, field) for c in series]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    return pa.table(
        {
            "key": keys,
            "step": cat("steps", np.int64),
            "value": cat("values", np.float64),
            "time": cat("times", np.float64),
        }
    )


def as_csv(series: list[SeriesColumns]) -> bytes:
    out = io.BytesIO()
    pa_csv.write_csv(as_table(series, for_spreadsheet=True), out, pa_csv.WriteOptions(quoting_style="needed"))
    return out.getvalue()


def as_parquet(series: list[SeriesColumns]) -> bytes:
    out = io.BytesIO()
    pq.write_table(as_table(series), out, compression="snappy")
    return out.getvalue()
