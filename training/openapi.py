"""The hand-written OpenAPI 3.1 description of the training API (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from training.engine.config import RECIPES  # the registry, no torch
from training.payloads import (
    INT32,
    MAX_CELL_CHARS,
    MAX_LINES,
    MAX_NAME,
    MAX_NAME_QUERY,
    MAX_PATH,
    MAX_POINTS,
    MAX_RECIPE,
    MAX_STEP,
    MAX_TABLE_CHARS,
    MAX_TABLE_COLUMNS,
    MAX_TABLE_ROWS,
    MAX_TAG,
    MAX_TAGS,
    MAX_TIME,
    STREAMS,
    SYSTEM_FIELDS,
)
from training.selectors import MAX_HISTORY_POINTS
from training.services.runs import MAX_GPUS_PER_RUN


def _study_parts() -> tuple[dict[str, Any], dict[str, Any]]:
    # The studies API lives in the evaluation app; one document describes both, under the same keys.
    from evaluation.openapi import study_paths, study_schemas

    return study_schemas(), study_paths()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": _ref(schema)}},
        "description": "JSON; may be sent with `Content-Encoding: gzip` (the Python client always does).",
    }


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_ERRORS = {
    "400": _ok("Error", "Bad batch: `field` names the first bad value; nothing of the batch was written."),
    "401": _ok(
        "Error",
        "Missing or wrong token, or the run has ended (a run token writes only while its run is queued or running).",
    ),
    "413": _ok("Error", "Body larger than the route's limit (32 MiB by default), refused before it is read."),
}
RUN_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "lost"]
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
# The run resource (GET /api/runs/ and /api/runs/{id}/): lineage lists only runs the caller may see.
RUN_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "name": {"type": "string"},
    "recipe": {"type": "string"},
    "owner": {"type": "string", "description": "the owner's username"},
    "queue": {"type": "string"},
    "gpus": {"type": "integer", "description": "GPUs the run asked for"},
    "shared": {"type": "boolean"},
    "status": {"enum": RUN_STATUSES},
    "exit_code": {"type": ["integer", "null"]},
    "created_at": {"type": "string", "format": "date-time"},
    "started_at": NULLABLE_TIME,
    "finished_at": NULLABLE_TIME,
    "duration_s": {"type": ["number", "null"]},
    "origin": {
        "enum": ["launched", "retry", "resume"],
        "description": "launched: fresh (or by a script); retry: the parent's config from step 1; "
        "resume: continues from a checkpoint of the parent or its ancestors",
    },
    "parent": {"type": ["integer", "null"], "description": "the run retried or resumed, if the caller may see it"},
    "children": {
        "type": "array",
        "items": {"type": "integer"},
        "description": "retries and resumes of this run that the caller may see, oldest first",
    },
    "archived": {"type": "boolean"},
    "archived_at": NULLABLE_TIME,
    "tags": {"type": "array", "items": {"type": "string"}},
}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
STEP = {"type": "integer", "minimum": 0, "maximum": MAX_STEP - 1}
TIME = {"type": "number", "minimum": 0, "exclusiveMaximum": MAX_TIME, "description": "unix seconds"}
FORMAT = {"enum": ["json", "csv", "parquet"], "default": "json"}
STEP_QUERY = {"type": "integer", "minimum": -MAX_STEP, "maximum": MAX_STEP}
KEY = {"type": "string", "pattern": r"^[A-Za-z0-9_.:/@%+\- ]{1,200}$"}


def _ingest(summary: str, schema: str, answer: str = "IngestResult", description: str = "") -> dict[str, Any]:
    return {
        "summary": summary,
        **({"description": description} if description else {}),
        "security": [{"runToken": []}],
        "requestBody": _body(schema),
        "responses": {"200": _ok(answer), **_ERRORS},
    }


def _key_limit() -> str:
    limit = settings.RUN_MAX_METRIC_KEYS
    return (
        f"A run may have at most {limit} distinct metric keys (`RUN_MAX_METRIC_KEYS`; system samples count as "
        "`system/<field>` keys). A batch that would pass the limit is refused whole with a 400 whose `field` is "
        "`key`; keys the run already has are always accepted."
    )


def openapi_document(*, server: str) -> dict[str, Any]:
    number = {"type": "number"}
    study_schemas, study_paths = _study_parts()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Arbiter API",
            "version": "1",
            "description": (
                "Report metrics, logs and checkpoints of a training run (per-run token), create runs from "
                "scripts (user API key), and read downsampled chart series. Drive human studies with the "
                "same key: create them, upload items, assign annotators, read progress and results, export. "
                "Points are keyed on (run, key, step): re-sending a batch writes nothing twice; a second "
                "value for the same step is ignored (the first one wins)."
            ),
        },
        "servers": [{"url": server or "/"}],
        "components": {
            "securitySchemes": {
                "runToken": {"type": "http", "scheme": "bearer", "description": "arb_r_… issued when the run starts"},
                "apiKey": {"type": "http", "scheme": "bearer", "description": "arb_u_… a user's API key"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
            "schemas": {
                **study_schemas,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "field": {"type": "string", "description": "JSON path of the bad value, e.g. points[3].value"},
                    },
                },
                "Point": {
                    "type": "object",
                    "required": ["key", "step", "value"],
                    "properties": {
                        "key": KEY,
                        "step": STEP,
                        "value": {"type": "number", "description": "finite (NaN and ±inf are refused)"},
                        "time": {**TIME, "description": "unix seconds; default: time of receipt"},
                    },
                },
                "MetricSeries": {
                    "type": "object",
                    "required": ["key", "steps", "values"],
                    "properties": {
                        "key": KEY,
                        "steps": {"type": "array", "items": STEP},
                        "values": {
                            "type": "array",
                            "items": {"type": "number"},
                            "description": "as long as steps; finite",
                        },
                        "times": {
                            "type": "array",
                            "items": TIME,
                            "description": "unix seconds, as long as steps; default: time of receipt",
                        },
                    },
                },
                "MetricBlock": {
                    "type": "object",
                    "required": ["keys", "steps", "values"],
                    "description": (
                        "Rows that share one key set, as packed little-endian numbers in base64: nothing is "
                        "formatted as text, and every float arrives bit for bit. What arbiter_client sends."
                    ),
                    "properties": {
                        "keys": {"type": "array", "minItems": 1, "maxItems": 1000, "uniqueItems": True, "items": KEY},
                        "steps": {
                            "type": "string",
                            "format": "byte",
                            "description": "int64 per row, each in [0, 2^62)",
                        },
                        "values": {
                            "type": "string",
                            "format": "byte",
                            "description": "float64, row-major: len(steps) × len(keys), finite",
                        },
                        "times": {
                            "type": "string",
                            "format": "byte",
                            "description": "float64 unix seconds per row; default: time of receipt",
                        },
                    },
                },
                "MetricBatch": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["blocks"],
                            "properties": {
                                "blocks": {
                                    "type": "array",
                                    "items": _ref("MetricBlock"),
                                    "description": f"binary columns, at most {MAX_POINTS} points (the SDK's shape)",
                                }
                            },
                        },
                        {
                            "type": "object",
                            "required": ["series"],
                            "properties": {
                                "series": {
                                    "type": "array",
                                    "items": _ref("MetricSeries"),
                                    "description": f"columnar JSON, at most {MAX_POINTS} points in all",
                                }
                            },
                        },
                        {
                            "type": "object",
                            "required": ["points"],
                            "properties": {"points": {"type": "array", "maxItems": MAX_POINTS, "items": _ref("Point")}},
                        },
                    ]
                },
                "LogBatch": {
                    "type": "object",
                    "required": ["lines"],
                    "properties": {
                        "lines": {
                            "type": "array",
                            "maxItems": MAX_LINES,
                            "items": {
                                "type": "object",
                                "required": ["seq", "text"],
                                "properties": {
                                    "seq": {
                                        **STEP,
                                        "description": "line number within the stream: the idempotency key",
                                    },
                                    "stream": {"enum": sorted(STREAMS), "default": "client"},
                                    "text": {
                                        "type": "string",
                                        "description": "kept up to 10,000 characters; NUL characters are removed",
                                    },
                                    "time": TIME,
                                },
                            },
                        }
                    },
                },
                "SystemBatch": {
                    "type": "object",
                    "required": ["samples"],
                    "properties": {
                        "samples": {
                            "type": "array",
                            "maxItems": MAX_LINES,
                            "items": {
                                "type": "object",
                                "required": ["seq"],
                                "properties": {
                                    "seq": STEP,
                                    "time": TIME,
                                    **dict.fromkeys(SYSTEM_FIELDS, number),
                                },
                            },
                        }
                    },
                    "description": "Stored as metrics `system/<field>` with step = seq.",
                },
                "Checkpoint": {
                    "type": "object",
                    "required": ["step", "path"],
                    "properties": {
                        "step": STEP,
                        "path": {
                            "type": "string",
                            "pattern": "^(/|file:///|s3://)[^\u0000]*$",
                            "maxLength": MAX_PATH,
                            "description": (
                                "absolute path or file:// / s3:// URI, inside the run's own artifact location "
                                "(`<store>/runs/<run_id>/…`); anything else is a 400 naming `path`"
                            ),
                        },
                    },
                },
                "Table": {
                    "type": "object",
                    "required": ["step", "columns", "rows"],
                    "properties": {
                        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.:/@%+\- ]{1,64}$", "default": "samples"},
                        "step": STEP,
                        "columns": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_TABLE_COLUMNS,
                            "items": {"type": "string", "minLength": 1, "maxLength": 100},
                            "description": "distinct names; `prompt` and `completion` let a row be sent to a study",
                        },
                        "rows": {
                            "type": "array",
                            "maxItems": MAX_TABLE_ROWS,
                            "items": {
                                "type": "array",
                                "items": {
                                    "type": ["string", "number", "boolean", "null"],
                                    "maxLength": MAX_CELL_CHARS,
                                },
                                "description": "one cell per column",
                            },
                        },
                    },
                    "description": (
                        f"A small table logged at a step (prompts, completions, rewards); at most {MAX_TABLE_CHARS} "
                        "characters of text. Keyed on (run, name, step): a re-sent table is not written again."
                    ),
                },
                "TableAnswer": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "step": {"type": "integer"},
                        "rows": {"type": "integer"},
                        "written": {"type": "integer", "description": "1 if stored now, 0 for a re-sent table"},
                    },
                },
                "TableSteps": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "names": {"type": "array", "items": {"type": "string"}},
                        "steps": {"type": "array", "items": {"type": "integer"}},
                    },
                },
                "Lineage": {
                    "type": "object",
                    "description": (
                        "Links between studies, export versions (with SHA-256), runs, checkpoints and the studies "
                        "that judged them; only what the reader may see."
                    ),
                },
                "Leaderboard": {
                    "type": "object",
                    "properties": {
                        "method": {"type": "string"},
                        "standings": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "policy": {"type": "object"},
                                    "rating": number,
                                    "low": number,
                                    "high": number,
                                    "wins": {"type": "integer"},
                                    "losses": {"type": "integer"},
                                    "ties": {"type": "integer"},
                                    "studies": {"type": "integer"},
                                },
                            },
                        },
                    },
                },
                "StatusReport": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"enum": ["running", "succeeded", "failed", "cancelled"]},
                        "exit_code": {"type": ["integer", "null"], "minimum": INT32[0], "maximum": INT32[1]},
                    },
                    "description": "Only for runs created through POST /api/runs/ (409 otherwise).",
                },
                "StatusAnswer": {"type": "object", "properties": {"status": {"type": "string"}}},
                "IngestResult": {
                    "type": "object",
                    "properties": {
                        "received": {"type": "integer"},
                        "written": {"type": "integer", "description": "new rows; 0 for a re-sent batch"},
                        "seq": {"type": "integer"},
                    },
                },
                "NewRun": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": MAX_NAME, "pattern": "^[^\u0000]*$"},
                        "config": {"type": "object", "description": "any JSON object; no NUL characters in it"},
                        "tags": {
                            "type": "array",
                            "maxItems": MAX_TAGS,
                            "items": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_TAG,
                                "pattern": "^\\s*[^\\s\u0000][^\u0000]*$",
                            },
                        },
                    },
                },
                "LaunchRun": {
                    "type": "object",
                    "required": ["recipe"],
                    "properties": {
                        "recipe": {"type": "string", "enum": sorted(RECIPES)},
                        "config": {
                            "type": "object",
                            "description": "the recipe's config (the launch form's fields); defaults fill the rest",
                        },
                        "name": {"type": "string", "maxLength": MAX_NAME, "pattern": "^[^\u0000]*$"},
                        "queue": {"type": "string", "enum": list(getattr(settings, "ARBITER_RUN_QUEUES", ["gpu"]))},
                        "shared": {"type": "boolean"},
                        "tags": {"type": "array", "maxItems": MAX_TAGS, "items": {"type": "string"}},
                        "gpus": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_GPUS_PER_RUN,
                            "default": 1,
                            "description": "GPUs the run uses (under torchrun when > 1); refused with a 422 naming "
                            "`gpus` when no worker on the queue has that many slots",
                        },
                    },
                },
                "LaunchedRun": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "url": {"type": "string"},
                        "status": {"type": "string"},
                        "gpus": {"type": "integer"},
                    },
                },
                "CreatedRun": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "token": {"type": "string", "description": "run token, shown once"},
                        "url": {"type": "string"},
                        "status": {"type": "string"},
                    },
                },
                "Run": {
                    "type": "object",
                    "properties": RUN_PROPERTIES,
                },
                "RunList": {
                    "type": "object",
                    "properties": {
                        "runs": {"type": "array", "items": _ref("Run")},
                        "next": {
                            "type": ["integer", "null"],
                            "description": "pass as `before` for the next page; null on the last",
                        },
                    },
                },
                "RunState": {
                    "type": "object",
                    "properties": {
                        **RUN_PROPERTIES,
                        "seq": {"type": "integer", "description": "sequence number of the last live event"},
                        "keys": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Series": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "total": {"type": "integer"},
                        "downsampled": {"type": "boolean"},
                        "start": {"type": ["integer", "null"]},
                        "end": {"type": ["integer", "null"]},
                        "points": {
                            "type": "array",
                            "items": {
                                "type": "array",
                                "items": number,
                                "minItems": 3,
                                "maxItems": 3,
                                "description": "[step, value, unix time]",
                            },
                        },
                    },
                },
                "Empty": {"type": "object"},
                "Heartbeat": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string"},
                        "heartbeat_timeout_s": {
                            "type": "integer",
                            "description": "silence after which a running run is marked lost",
                        },
                        "cancel_requested": {"type": "boolean"},
                    },
                },
                "History": {
                    "type": "object",
                    "properties": {
                        "run": {"type": "integer"},
                        "start": {"type": ["integer", "null"]},
                        "end": {"type": ["integer", "null"]},
                        "total": {"type": "integer"},
                        "series": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "key": {"type": "string"},
                                    "steps": {"type": "array", "items": {"type": "integer"}},
                                    "values": {"type": "array", "items": number},
                                    "times": {"type": "array", "items": number},
                                },
                            },
                        },
                    },
                },
                "LogLines": {
                    "type": "object",
                    "properties": {
                        "lines": {
                            "type": "array",
                            "items": {"type": "array", "description": "[id, stream, text, unix time]"},
                        }
                    },
                },
            },
        },
        "paths": {
            "/api/runs/": {
                "get": {
                    "summary": "The runs the caller may see, newest first, with their lineage",
                    "security": [{"session": []}, {"apiKey": []}],
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "archived", "in": "query", "schema": {"enum": ["false", "true", "all"]}},
                        {"name": "status", "in": "query", "schema": {"enum": RUN_STATUSES}},
                        {"name": "tag", "in": "query", "schema": {"type": "string", "maxLength": MAX_TAG}},
                        {"name": "recipe", "in": "query", "schema": {"type": "string", "maxLength": MAX_RECIPE}},
                        {
                            "name": "q",
                            "in": "query",
                            "description": "A part of the run's name, in any case.",
                            "schema": {"type": "string", "maxLength": MAX_NAME_QUERY},
                        },
                    ],
                    "responses": {
                        "200": _ok("RunList"),
                        "400": _ok("Error", "A bad parameter, named in `field`."),
                        "401": _ok("Error", "Not logged in and no API key."),
                        "403": _ok("Error", "Not a researcher."),
                    },
                },
                "post": {
                    "summary": "Create a run for a script started outside the platform",
                    "security": [{"apiKey": []}],
                    "requestBody": _body("NewRun"),
                    "responses": {
                        "201": _ok("CreatedRun", "Created"),
                        **_ERRORS,
                        "403": _ok("Error", "Not a researcher."),
                    },
                },
            },
            "/api/runs/launch/": {
                "post": {
                    "summary": "Launch a platform run (a recipe and its config), as the launch form does",
                    "security": [{"apiKey": []}],
                    "requestBody": _body("LaunchRun"),
                    "responses": {
                        "201": _ok("LaunchedRun", "Queued"),
                        **_ERRORS,
                        "403": _ok("Error", "Not a researcher."),
                        "422": _ok(
                            "Error",
                            "The config is refused: `field` names it (`config.dataset_path` for a missing file, "
                            "wrong columns or data without usable rows; `recipe`, `queue`).",
                        ),
                    },
                }
            },
            "/api/runs/{run_id}/": {
                "parameters": [RUN_ID],
                "get": {
                    "summary": "Run state: live sequence number, status, metric keys",
                    "security": [{"session": []}, {"apiKey": []}],
                    "responses": {"200": _ok("RunState"), "404": _ok("Error", "No such run (or not yours).")},
                },
                "delete": {
                    "summary": "Delete a run and what it logged, as its page does; its files leave the store",
                    "security": [{"apiKey": []}],
                    "responses": {
                        "204": {"description": "Deleted."},
                        "401": _ok("Error", "No API key."),
                        "403": _ok("Error", "Not a researcher."),
                        "404": _ok("Error", "No such run, or not yours to delete (shared runs included)."),
                        "409": _ok("Error", "Still active, or something depends on it (named in `error`)."),
                    },
                },
            },
            "/api/runs/{run_id}/metrics/": {
                "parameters": [RUN_ID],
                "post": _ingest("Report metric points", "MetricBatch", description=_key_limit()),
                "get": {
                    "summary": "A series, min/max-downsampled to `buckets` columns over [start, end]",
                    "security": [{"session": []}, {"apiKey": []}],
                    "parameters": [
                        {"name": "key", "in": "query", "required": True, "schema": KEY},
                        {"name": "start", "in": "query", "schema": STEP_QUERY},
                        {"name": "end", "in": "query", "schema": STEP_QUERY},
                        {
                            "name": "buckets",
                            "in": "query",
                            "schema": {"type": "integer", "default": 1000, "minimum": 1, "maximum": 1_000_000},
                            "description": "screen columns; clamped to [10, 5000]",
                        },
                    ],
                    "responses": {"200": _ok("Series"), "404": _ok("Error", "No such run.")},
                },
            },
            "/api/runs/{run_id}/history/": {
                "parameters": [RUN_ID],
                "get": {
                    "summary": "Every point of the run's series in one call (columnar JSON, CSV or Parquet)",
                    "description": (
                        "JSON: one {key, steps, values, times} per series. CSV and Parquet: one row per point, "
                        f"columns key, step, value, time. At most {MAX_HISTORY_POINTS:,} points per call (413)."
                    ),
                    "security": [{"session": []}, {"apiKey": []}],
                    "parameters": [
                        {
                            "name": "keys",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "comma-separated metric names; default: every series",
                        },
                        {"name": "start", "in": "query", "schema": STEP_QUERY},
                        {"name": "end", "in": "query", "schema": STEP_QUERY},
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"enum": ["json", "csv", "parquet"], "default": "json"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {"schema": _ref("History")},
                                "text/csv": {"schema": {"type": "string"}},
                                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        "400": _ok("Error", "A bad parameter (`field` names it)."),
                        "404": _ok("Error", "No such run (or not yours)."),
                        "413": _ok("Error", "Too many points for one call: ask for fewer keys or a step range."),
                    },
                },
            },
            "/api/runs/{run_id}/heartbeat/": {
                "parameters": [RUN_ID],
                "post": {
                    **_ingest("A script's sign of life (runs created through POST /api/runs/)", "Empty", "Heartbeat"),
                    "description": (
                        "A run created by a script is marked lost after RUN_HEARTBEAT_TIMEOUT seconds without a "
                        "report; any report counts, this one is for quiet periods. A lost run that reports again "
                        "is running again."
                    ),
                },
            },
            "/api/runs/{run_id}/logs/": {
                "parameters": [RUN_ID],
                "post": _ingest("Append log lines", "LogBatch"),
                "get": {
                    "summary": "The last 500 lines, or those after `after` (a line id)",
                    "security": [{"session": []}, {"apiKey": []}],
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                        }
                    ],
                    "responses": {"200": _ok("LogLines")},
                },
            },
            "/api/runs/{run_id}/system/": {
                "parameters": [RUN_ID],
                "post": _ingest("Report machine load samples", "SystemBatch", description=_key_limit()),
            },
            "/api/runs/{run_id}/checkpoints/": {
                "parameters": [RUN_ID],
                "post": _ingest("Announce a checkpoint folder", "Checkpoint", "Checkpoint"),
            },
            "/api/runs/{run_id}/tables/": {
                "parameters": [RUN_ID],
                "post": {
                    **_ingest("Log a small table (prompts, completions, rewards) at a step", "Table", "TableAnswer"),
                    "responses": {
                        "200": _ok("TableAnswer"),
                        **_ERRORS,
                        "409": _ok("Error", "The run already stores its maximum number of tables."),
                    },
                },
                "get": {
                    "summary": "Steps with a table (`?name=`), or one table (`&step=`: columns and rows)",
                    "security": [{"session": []}, {"apiKey": []}],
                    "parameters": [
                        {
                            "name": "name",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "pattern": r"^[A-Za-z0-9_.:/@%+\- ]{1,64}$",
                                "default": "samples",
                            },
                        },
                        {"name": "step", "in": "query", "schema": STEP},
                    ],
                    "responses": {
                        "200": _ok("TableSteps"),
                        "400": _ok("Error", "A bad name or step."),
                        "404": _ok("Error", "No such run or table."),
                    },
                },
            },
            "/api/lineage/runs/{run_id}/": {
                "parameters": [RUN_ID],
                "get": {
                    "summary": "A run's lineage: exports it trained on, its checkpoints, the studies that judged them",
                    "security": [{"session": []}, {"apiKey": []}],
                    "responses": {"200": _ok("Lineage"), "404": _ok("Error", "No such run (or not yours).")},
                },
            },
            "/api/lineage/studies/{study_id}/": {
                "parameters": [{"name": "study_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "get": {
                    "summary": "A study's lineage: who wrote its items, its export versions and the runs they trained",
                    "security": [{"session": []}, {"apiKey": []}],
                    "responses": {"200": _ok("Lineage"), "404": _ok("Error", "No such study (or not yours).")},
                },
            },
            "/api/leaderboard/": {
                "get": {
                    "summary": "Bradley–Terry ratings of every judged checkpoint and model (`?run=` for one run's)",
                    "security": [{"session": []}, {"apiKey": []}],
                    "parameters": [{"name": "run", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
                    "responses": {
                        "200": _ok("Leaderboard"),
                        "400": _ok("Error", "run is not a run id."),
                        "404": _ok("Error", "No such run."),
                    },
                },
            },
            "/api/runs/{run_id}/status/": {
                "parameters": [RUN_ID],
                "post": {
                    **_ingest("Report the end of an API-created run", "StatusReport", "StatusAnswer"),
                    "responses": {
                        "200": _ok("StatusAnswer"),
                        **_ERRORS,
                        "409": _ok("Error", "A platform run's status belongs to its supervisor."),
                    },
                },
                "get": {
                    "summary": "Same as GET /api/runs/{run_id}/",
                    "security": [{"session": []}, {"apiKey": []}],
                    "responses": {"200": _ok("RunState")},
                },
            },
            **study_paths,
        },
    }
