"""Reading and driving the platform with a user API key: run histories, and human studies end to end.

    api = arbiter_client.Api("http://arbiter:8000", "arb_u_…")   # or ARBITER_URL / ARBITER_API_KEY
    api.run(12).history(["loss", "reward"])                        # a pandas DataFrame if pandas is installed
    run = api.launch("grpo", {"max_steps": 200}, gpus=2)           # queued; a refusal names the field
    [(r.name, r.origin, r.parent, r.children, r.tags) for r in api.runs()]   # runs this user may see

    study = api.create_study(name="A vs B", kind="pairwise", overlap=3, annotators=["anna", "ben"])
    study.upload_items("outputs.jsonl")      # or a list of dicts; ImportRejected names each bad row
    study.progress()                          # {"judgments": 120, "target": 300, "percent": 40.0, ...}
    study.wait_until_complete()
    study.results()                           # win rates, Bradley–Terry ratings, ... with 95% intervals
    study.export("reward").download("train.jsonl")

Every call raises ArbiterError for a refusal (4xx: its `status` and the server's message, which
names the bad field) and TransientError when the server cannot be reached or fails.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from ._http import ArbiterError, Connection

REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Api:
    """A connection to one Arbiter server as one user (their API key: arb_u_…)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0) -> None:
        url = url or os.environ.get("ARBITER_URL", "")
        api_key = api_key or os.environ.get("ARBITER_API_KEY", "")
        if not url or not api_key:
            raise ValueError("arbiter_client.Api needs url and api_key (or ARBITER_URL and ARBITER_API_KEY)")
        self.url = url
        self.timeout = timeout
        self._conn = Connection(url, api_key, timeout=timeout)

    def get(self, path: str, **params: Any) -> Any:
        return self._conn.request("GET", path + _query(params))

    def post(self, path: str, payload: Any) -> Any:
        return self._conn.request("POST", path, payload)

    def delete(self, path: str) -> None:
        self._conn.exchange("DELETE", path)

    def download(self, path: str, target: str | os.PathLike[str], **params: Any) -> Path:
        """GET `path` and write the answer's bytes to `target` (CSV, Parquet, JSONL exports).

        A redirect (an export kept in an S3 bucket answers with a signed URL) is followed without the API
        key: the signature is the credential, and the key must not reach another host.
        """
        answer = self._conn.exchange("GET", path + _query(params), accept="*/*")
        out = Path(target)
        location = answer.headers.get("location")
        if answer.status in REDIRECTS and location:
            url = urljoin(self._conn.base + "/", location)
            if urlsplit(url).scheme not in {"http", "https"}:
                raise ArbiterError(answer.status, json.dumps({"error": f"redirected to {url!r}"}))
            request = urllib.request.Request(url, method="GET")  # noqa: S310 - http(s) only, checked above
            with urllib.request.urlopen(request, timeout=self.timeout) as remote, out.open("wb") as fh:  # noqa: S310
                shutil.copyfileobj(remote, fh, 1 << 20)
            return out
        out.write_bytes(answer.data)
        return out

    def run(self, run_id: int) -> RunRef:
        return RunRef(self, int(run_id))

    def runs(
        self,
        *,
        archived: bool | None = False,
        status: str | None = None,
        tag: str | None = None,
        recipe: str | None = None,
        name_contains: str | None = None,
        limit: int = 200,
    ) -> list[RunRef]:
        """The runs this user may see, newest first (`archived=None` for archived and not), at most `limit`;
        `recipe` exactly, `name_contains` any part of the name in any case."""
        out: list[RunRef] = []
        before: int | None = None
        flag = "all" if archived is None else ("true" if archived else "false")
        while len(out) < limit:
            page = self.get(
                "/api/runs/",
                archived=flag,
                status=status,
                tag=tag,
                recipe=recipe,
                q=name_contains,
                before=before,
                limit=min(200, limit - len(out)),
            )
            out += [RunRef(self, int(data["id"]), data) for data in page["runs"]]
            before = page["next"]
            if before is None:
                break
        return out

    def launch(
        self,
        recipe: str,
        config: Mapping[str, Any] | None = None,
        *,
        name: str = "",
        queue: str = "gpu",
        tags: Iterable[str] = (),
        shared: bool = False,
        gpus: int = 1,
    ) -> RunRef:
        """Queue a platform run, as the launch form does; `gpus` > 1 starts it under torchrun on a worker with
        that many free slots. A refused launch raises ArbiterError whose `field` names the culprit (`gpus`,
        `queue`, `config.learning_rate`, ...)."""
        body = {
            "recipe": recipe,
            "config": dict(config or {}),
            "name": name,
            "queue": queue,
            "tags": list(tags),
            "shared": shared,
            "gpus": gpus,
        }
        return RunRef(self, int(self.post("/api/runs/launch/", body)["id"]))

    # --- studies ---------------------------------------------------------------------------
    def create_study(
        self,
        *,
        name: str,
        kind: str,
        instructions: str = "",
        overlap: int = 1,
        annotators: Iterable[str] = (),
        shared_with: Iterable[str] = (),
        **settings: Any,
    ) -> Study:
        """A new study (kind: pairwise, rubric, violation or rating); annotators and researchers by username.

        Other settings as the form names them: lease_seconds, accuracy_threshold, scale_labels
        (rating studies), text_format ("plain" or "markdown").
        """
        body = {
            "name": name,
            "kind": kind,
            "instructions": instructions,
            "overlap": overlap,
            "annotators": list(annotators),
            "shared_with": list(shared_with),
            **settings,
        }
        return Study(self, self.post("/api/studies/", body))

    def study(self, study_id: int) -> Study:
        return Study(self, self.get(f"/api/studies/{int(study_id)}/"))

    def studies(self) -> list[Study]:
        """The studies this user may see (their own, those shared with them; every study for an admin)."""
        return [Study(self, data) for data in self.get("/api/studies/")["studies"]]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunRef:
    """A run to read: what it is and where it came from (fetched on first use; `refresh()` re-reads), its state
    and its full metric history."""

    def __init__(self, api: Api, run_id: int, data: Mapping[str, Any] | None = None) -> None:
        self.api = api
        self.id = run_id
        self._data: dict[str, Any] | None = dict(data) if data is not None else None

    def __repr__(self) -> str:
        return f"RunRef({self.id})"

    def state(self) -> dict[str, Any]:
        """Status, timestamps, lineage and the names of the series logged so far."""
        result: dict[str, Any] = self.api.get(f"/api/runs/{self.id}/")
        self._data = result
        return result

    def refresh(self) -> RunRef:
        self.state()
        return self

    def delete(self) -> None:
        """Delete the run and everything it logged (its checkpoints' files too), as its page does. Only its
        owner may; refused (ArbiterError 409, saying why) while it is active or something depends on it."""
        self.api.delete(f"/api/runs/{self.id}/")

    @property
    def data(self) -> dict[str, Any]:
        return self._data if self._data is not None else self.state()

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def gpus(self) -> int:
        return int(self.data["gpus"])

    @property
    def origin(self) -> str:
        """ "launched" (fresh), "retry" (the parent's config from step 1) or "resume" (from a checkpoint)."""
        return str(self.data["origin"])

    @property
    def parent(self) -> RunRef | None:
        """The run this one retried or resumed; None also when this user may not see it."""
        parent = self.data.get("parent")
        return None if parent is None else RunRef(self.api, int(parent))

    @property
    def children(self) -> list[RunRef]:
        """Retries and resumes of this run this user may see, oldest first."""
        return [RunRef(self.api, int(c)) for c in self.data.get("children", [])]

    @property
    def archived(self) -> bool:
        return bool(self.data["archived"])

    @property
    def tags(self) -> list[str]:
        return list(self.data["tags"])

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


class ImportRejected(ArbiterError):
    """The server refused an upload; nothing was imported. `errors`: the first rows at fault."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status, body)
        data = json.loads(body) if body else {}
        self.message: str = data.get("error", "")
        self.errors: list[dict[str, Any]] = data.get("errors", [])  # {line, field, message}
        self.error_count: int = data.get("error_count", len(self.errors))
        self.valid_count: int = data.get("valid_count", 0)

    def __str__(self) -> str:
        rows = "; ".join(f"line {e['line']} {e['field'] or ''}: {e['message']}" for e in self.errors[:5])
        return f"{self.message}" + (f" ({rows}{'; …' if self.error_count > 5 else ''})" if rows else "")


class Study:
    """A human study on the server: items in, annotators assigned, progress and results out, exports."""

    def __init__(self, api: Api, data: Mapping[str, Any]) -> None:
        self.api = api
        self.data = dict(data)
        self.id: int = int(data["id"])

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    def __repr__(self) -> str:
        return f"<Study {self.id} {self.kind} {self.name!r}>"

    def refresh(self) -> Study:
        self.data = self.api.get(f"/api/studies/{self.id}/")
        return self

    def upload_items(
        self,
        source: str | os.PathLike[str] | bytes | Iterable[Mapping[str, Any]],
        *,
        import_valid_rows: bool = False,
        flag_unsplittable: bool = False,
        filename: str | None = None,
        wait: bool = True,
        timeout: float = 3600.0,
    ) -> dict[str, Any]:
        """Import items from a file (JSONL, JSON array, CSV, Parquet: the upload form's formats), bytes, or rows.

        Returns the import report ({"created": n, ...}). A file the server reads in the background
        (a large one) is waited for, unless wait=False (then the report says "status": "queued"; poll
        `import_status(report["id"])`).
        Raises ImportRejected, naming the line and field of each bad row, when nothing was imported.
        """
        if isinstance(source, bytes):
            data, name = source, filename or "items.jsonl"
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            data, name = path.read_bytes(), filename or path.name
        else:
            data = b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in source)
            name = filename or "items.jsonl"
        query = _query(
            {
                "filename": name,
                "import_valid_rows": "true" if import_valid_rows else None,
                "flag_unsplittable": "true" if flag_unsplittable else None,
            }
        )
        try:
            report: dict[str, Any] = self.api._conn.exchange(
                "POST",
                f"/api/studies/{self.id}/items/{query}",
                body=gzip.compress(data, compresslevel=1),
                content_type="application/octet-stream",
            ).json()
        except ArbiterError as exc:
            if exc.status == 422:
                raise ImportRejected(exc.status, exc.body) from None
            raise
        if wait and report.get("status") in {"queued", "running"}:
            report = self._wait_import(int(report["id"]), timeout)
        return report

    def import_status(self, import_id: int) -> dict[str, Any]:
        """An upload's report: status (queued, running, done, rejected, failed), percent read, rows, errors."""
        report: dict[str, Any] = self.api.get(f"/api/studies/{self.id}/imports/{int(import_id)}/")
        return report

    def _wait_import(self, import_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            report = self.import_status(import_id)
            if report["status"] == "rejected":
                raise ImportRejected(422, json.dumps(report))
            if report["status"] == "failed":
                raise ArbiterError(500, json.dumps({"error": report.get("error") or "the import failed"}))
            if report["status"] == "done":
                return report
            if time.monotonic() > deadline:
                raise TimeoutError(f"import {import_id} still {report['status']} after {timeout:.0f} s")
            time.sleep(1.0)

    def items(
        self, *, offset: int = 0, limit: int = 100, status: str | None = None, q: str | None = None
    ) -> list[dict[str, Any]]:
        """A page of the study's items as stored (payload, gold flag, judgments so far), in queue order.

        status: unjudged, judged, waiting, flagged or gold (the item browser's filters); q: text to search for.
        """
        page: list[dict[str, Any]] = self.api.get(
            f"/api/studies/{self.id}/items/", offset=offset, limit=limit, status=status, q=q
        )["items"]
        return page

    def assign(self, annotators: Iterable[str]) -> list[str]:
        """Add annotators (usernames) to the study; returns everyone assigned now."""
        return self._annotators({"add": list(annotators)})

    def unassign(self, annotators: Iterable[str]) -> list[str]:
        """Take annotators off the study (their judgments stay); returns everyone assigned now."""
        return self._annotators({"remove": list(annotators)})

    def annotators(self) -> list[str]:
        names: list[str] = self.api.get(f"/api/studies/{self.id}/annotators/")["annotators"]
        return names

    def _annotators(self, body: dict[str, list[str]]) -> list[str]:
        names: list[str] = self.api.post(f"/api/studies/{self.id}/annotators/", body)["annotators"]
        return names

    def progress(self) -> dict[str, Any]:
        """Items, judgments given and wanted (items × overlap), open leases, percent done."""
        result: dict[str, Any] = self.api.get(f"/api/studies/{self.id}/progress/")
        return result

    def wait_until_complete(self, *, timeout: float = 86_400.0, poll: float = 10.0) -> dict[str, Any]:
        """Poll progress until every item has its `overlap` judgments; returns the last progress."""
        deadline = time.monotonic() + timeout
        while True:
            progress = self.progress()
            if progress["target"] and progress["judgments"] >= progress["target"]:
                return progress
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {self.id}: {progress['judgments']} of {progress['target']} judgments")
            time.sleep(poll)

    def results(self) -> dict[str, Any]:
        """Everything the results page shows, as data (the page's own computation), with its 95% intervals.

        Win rates and pass rates: Wilson; Bradley–Terry: bootstrap; mean ratings: normal approximation
        (`intervals` names each). Violation studies: ST-WebAgentBench's CuP and risk ratios, as its analysis
        reports them (no intervals). Plus `quality` (gold accuracy, agreement) and the page's `charts` data.
        """
        result: dict[str, Any] = self.api.get(f"/api/studies/{self.id}/results/")
        return result

    def export(self, format: str = "reward", *, keep_ties: bool = False, **options: Any) -> Export:
        """Start an export: "reward" (a versioned dataset a recipe trains on), "judgments_jsonl" or "judgments_csv"."""
        body = {"format": format, "keep_ties": keep_ties, **options}
        return Export(self, self.api.post(f"/api/studies/{self.id}/exports/", body))

    def exports(self) -> list[Export]:
        return [Export(self, e) for e in self.api.get(f"/api/studies/{self.id}/exports/")["exports"]]


class Export:
    """An export job: poll it, then download its file."""

    def __init__(self, study: Study, data: Mapping[str, Any]) -> None:
        self.study = study
        self.data = dict(data)
        self.id: int = int(data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    def __repr__(self) -> str:
        return f"<Export {self.id} of study {self.study.id}: {self.status}>"

    def refresh(self) -> Export:
        self.data = self.study.api.get(f"/api/studies/{self.study.id}/exports/{self.id}/")
        return self

    def wait(self, *, timeout: float = 3600.0, poll: float = 0.5) -> Export:
        """Until the export is done; ArbiterError if it failed, TimeoutError if it is still running."""
        deadline = time.monotonic() + timeout
        while self.refresh().status not in {"done", "failed"}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"export {self.id} still {self.status} after {timeout:.0f} s")
            time.sleep(poll)
        if self.status == "failed":
            raise ArbiterError(500, json.dumps({"error": self.data.get("error") or "the export failed"}))
        return self

    def download(self, path: str | os.PathLike[str], *, timeout: float = 3600.0) -> Path:
        """Wait for the export, then write its file to `path`."""
        self.wait(timeout=timeout)
        return self.study.api.download(f"/api/studies/{self.study.id}/exports/{self.id}/download/", path)
