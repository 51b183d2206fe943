"""Reading and driving the platform with a user API key: run histories, and human studies end to end.

    api = arbiter_client.Api("http://arbiter:8000", "arb_u_…")   # or ARBITER_URL / ARBITER_API_KEY
    api.run(12).history(["loss", "reward"])                        # a pandas DataFrame if pandas is installed

Every call raises ArbiterError for a refusal (4xx: its `status` and the server's message, which
names the bad field) and TransientError when the server cannot be reached or fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ._http import Connection


class Api:
    """A connection to one Arbiter server as one user (their API key: arb_u_…)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0) -> None:
        url = url or os.environ.get("ARBITER_URL", "")
        api_key = api_key or os.environ.get("ARBITER_API_KEY", "")
        if not url or not api_key:
            raise ValueError("arbiter_client.Api needs url and api_key (or ARBITER_URL and ARBITER_API_KEY)")
        self.url = url
        self._conn = Connection(url, api_key, timeout=timeout)

    def get(self, path: str, **params: Any) -> Any:
        return self._conn.request("GET", path + _query(params))

    def post(self, path: str, payload: Any) -> Any:
        return self._conn.request("POST", path, payload)

    def download(self, path: str, target: str | os.PathLike[str], **params: Any) -> Path:
        """GET `path` and write the answer's bytes to `target` (CSV, Parquet, JSONL exports)."""
        answer = self._conn.exchange("GET", path + _query(params), accept="*/*")
        out = Path(target)
        out.write_bytes(answer.data)
        return out

    def run(self, run_id: int) -> RunRef:
        return RunRef(self, int(run_id))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunRef:
    """A run to read: its state and its full metric history."""

    def __init__(self, api: Api, run_id: int) -> None:
        self.api = api
        self.id = run_id

    def state(self) -> dict[str, Any]:
        """Status, timestamps and the names of the series logged so far."""
        result: dict[str, Any] = self.api.get(f"/api/runs/{self.id}/")
        return result

    def history_columns(
        self, keys: str | Sequence[str] | None = None, *, start: int | None = None, end: int | None = None
    ) -> list[dict[str, Any]]:
        """Every point as columns, one `{key, steps, values, times}` per series (the server's JSON, as is)."""
        answer = self.api.get(f"/api/runs/{self.id}/history/", keys=_keys(keys), start=start, end=end)
        series: list[dict[str, Any]] = answer["series"]
        return series

    def history(
        self,
        keys: str | Sequence[str] | None = None,
        *,
        start: int | None = None,
        end: int | None = None,
        pandas: bool | None = None,
    ) -> Any:
        """Every logged point as rows, one per step: `step`, `time` (unix seconds), then one column per key.

        A key not logged at a step is NaN (DataFrame) or None (list of dicts). `time` is the
        earliest wall time among the keys at that step (one `run.log` call shares one time).
        Returns a pandas DataFrame when pandas is installed (`pandas=False` for a list of dicts).
        """
        series = self.history_columns(keys, start=start, end=end)
        if pandas is None:
            try:
                import pandas as _pd  # noqa: F401
            except ImportError:
                pandas = False
            else:
                pandas = True
        return _frame(series) if pandas else _rows(series)

    def download_history(
        self,
        path: str | os.PathLike[str],
        *,
        format: str = "parquet",
        keys: str | Sequence[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Path:
        """Write the history as CSV or Parquet (`key, step, value, time`, one row a point) or JSON."""
        return self.api.download(
            f"/api/runs/{self.id}/history/", path, keys=_keys(keys), start=start, end=end, format=format
        )


def _keys(keys: str | Sequence[str] | None) -> str | None:
    if keys is None:
        return None
    if isinstance(keys, str):
        return keys
    return ",".join(keys)


def _query(params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(kept, quote_via=quote) if kept else ""


def _rows(series: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    series = list(series)
    names = [s["key"] for s in series]
    rows: dict[int, dict[str, Any]] = {}
    for s in series:
        key = s["key"]
        for step, value, t in zip(s["steps"], s["values"], s["times"], strict=True):
            row = rows.get(step)
            if row is None:
                row = rows[step] = {"step": step, "time": t, **dict.fromkeys(names)}
            elif t < row["time"]:
                row["time"] = t
            row[key] = value
    return [rows[step] for step in sorted(rows)]


def _frame(series: Iterable[dict[str, Any]]) -> Any:
    import pandas as pd

    series = list(series)

    def column(s: dict[str, Any], field: str) -> Any:
        return pd.Series(s[field], index=pd.Index(s["steps"], dtype="int64"), dtype="float64")

    values = pd.DataFrame({s["key"]: column(s, "values") for s in series})
    if not len(series):
        return pd.DataFrame(columns=["step", "time"])
    times = pd.DataFrame({s["key"]: column(s, "times") for s in series}).min(axis=1)
    values.insert(0, "time", times)
    values.index.name = "step"
    return values.sort_index().reset_index()
