"""The studies API's part of the OpenAPI document (training/openapi.py serves the whole, one document)."""

from __future__ import annotations

from typing import Any

from evaluation import api_payloads as limits
from evaluation.forms import MAX_UPLOAD_BYTES
from evaluation.models import ExportFormat, ExportStatus, ImportStatus, RewardStyle, StudyKind, TextFormat
from evaluation.selectors import ITEM_STATUSES

STUDY_ID = {"name": "study_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
IMPORT_ID = {"name": "import_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
EXPORT_ID = {"name": "export_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"session": []}]
TEXT = {"type": "string", "pattern": "^[^\u0000]*$"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
NULLABLE_NUMBER = {"type": ["number", "null"]}
TIME = {"type": ["string", "null"], "description": "ISO 8601"}
OFFSET = 2**31 - 1


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


ACCESS = {
    "401": _error("No session and no valid API key."),
    "403": _error("Not a researcher (annotators cannot use the studies API)."),
    "404": _error("No such study, or one neither yours nor shared with you."),
}
WRITE = {**ACCESS, "403": _error("Not a researcher, or the study is only shared with you (read-only).")}


def _usernames(description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": limits.MAX_USERS,
        "items": {"type": "string", "minLength": 1, "maxLength": limits.MAX_USERNAME},
        "description": description,
    }


def study_schemas() -> dict[str, Any]:
    return {
        "NewStudy": {
            "type": "object",
            "required": ["name", "kind"],
            "additionalProperties": False,
            "properties": {
                "name": {**TEXT, "minLength": 1, "maxLength": limits.MAX_NAME},
                "kind": {"enum": list(StudyKind.values)},
                "instructions": {**TEXT, "maxLength": limits.MAX_INSTRUCTIONS, "description": "Markdown"},
                "text_format": {"enum": list(TextFormat.values), "default": TextFormat.PLAIN},
                "overlap": {"type": "integer", "minimum": 1, "maximum": limits.MAX_OVERLAP, "default": 1},
                "lease_seconds": {
                    "type": "integer",
                    "minimum": limits.MIN_LEASE,
                    "maximum": limits.MAX_LEASE,
                    "default": 900,
                },
                "accuracy_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.7},
                "scale_labels": {
                    "type": "array",
                    "maxItems": limits.MAX_SCALE,
                    "items": {"type": "string", "minLength": 1, "maxLength": limits.MAX_LABEL},
                    "description": f"rating studies only: {limits.MIN_SCALE} to {limits.MAX_SCALE} labels, lowest "
                    "first (default: a five-point scale)",
                },
                "annotators": _usernames("usernames of annotators"),
                "shared_with": _usernames("usernames of researchers who may read the study"),
            },
        },
        "Study": {
            "type": "object",
            "properties": {
                "id": INTEGER,
                "name": {"type": "string"},
                "kind": {"enum": list(StudyKind.values)},
                "owner": {"type": "string"},
                "instructions": {"type": "string"},
                "text_format": {"type": "string"},
                "overlap": INTEGER,
                "lease_seconds": INTEGER,
                "accuracy_threshold": NUMBER,
                "scale_labels": {"type": "array", "items": {"type": "string"}},
                "annotators": {"type": "array", "items": {"type": "string"}},
                "shared_with": {"type": "array", "items": {"type": "string"}},
                "item_count": INTEGER,
                "created_at": {"type": "string"},
                "can_edit": {"type": "boolean"},
                "url": {"type": "string"},
                "results_url": {"type": "string"},
            },
        },
        "StudyList": {"type": "object", "properties": {"studies": {"type": "array", "items": _ref("Study")}}},
        "RowError": {
            "type": "object",
            "properties": {"line": INTEGER, "field": {"type": "string"}, "message": {"type": "string"}},
        },
        "Import": {
            "type": "object",
            "description": "An upload's report; `errors` are the first 50 bad rows, as the upload form lists them.",
            "properties": {
                "id": INTEGER,
                "status": {"enum": list(ImportStatus.values)},
                "filename": {"type": "string"},
                "container": {"type": "string"},
                "size_bytes": INTEGER,
                "bytes_read": INTEGER,
                "percent": INTEGER,
                "rows_read": INTEGER,
                "created": INTEGER,
                "waiting": INTEGER,
                "attached": INTEGER,
                "verdicts": INTEGER,
                "flagged": INTEGER,
                "valid_count": INTEGER,
                "error_count": INTEGER,
                "errors": {"type": "array", "items": _ref("RowError")},
                "import_valid_rows": {"type": "boolean"},
                "error": {"type": "string", "description": "why a rejected or failed import stored nothing"},
                "created_at": {"type": "string"},
                "finished_at": TIME,
            },
        },
        "ImportRejected": {
            "type": "object",
            "required": ["error", "errors", "error_count", "valid_count"],
            "properties": {
                "status": {"const": "rejected"},
                "error": {"type": "string"},
                "field": {"type": "string"},
                "errors": {"type": "array", "items": _ref("RowError")},
                "error_count": INTEGER,
                "valid_count": INTEGER,
            },
        },
        "Items": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": INTEGER,
                            "position": INTEGER,
                            "external_id": {"type": "string"},
                            "payload": {"type": "object"},
                            "is_gold": {"type": "boolean"},
                            "expected": {},
                            "waiting": {"type": "boolean"},
                            "judgments": INTEGER,
                            "overlap": INTEGER,
                        },
                    },
                },
                "total": INTEGER,
                "offset": INTEGER,
                "limit": INTEGER,
            },
        },
        "AnnotatorChange": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"add": _usernames("annotators to assign"), "remove": _usernames("annotators to take off")},
        },
        "Annotators": {
            "type": "object",
            "properties": {"annotators": {"type": "array", "items": {"type": "string"}}},
        },
        "Progress": {
            "type": "object",
            "properties": {
                "kind": {"const": "progress"},
                "seq": INTEGER,
                "items": INTEGER,
                "judgments": INTEGER,
                "target": {"type": "integer", "description": "judgments wanted: Σ overlap over the items"},
                "open_leases": INTEGER,
                "annotators_active": INTEGER,
                "percent": NUMBER,
            },
        },
        "Results": {
            "type": "object",
            "required": ["study", "kind", "judgments", "charts"],
            "description": (
                "What the results page shows, from the same computation. Pairwise: `win_rates` (wins, losses, "
                "ties, rate with 95% Wilson `low`/`high`) and Bradley–Terry `ratings` (log-strength and Elo with "
                "95% bootstrap intervals). Rubric: `per_plan`, `per_rubric_item` pass rates and `preference` win "
                "rates. Violation: `people` and `automatic` ST-WebAgentBench summaries per agent (completion, "
                "CuP, partial CuP, risk ratios per dimension) and `comparisons` (Cohen's kappa per dimension, "
                "disagreements). Rating: mean per system with its 95% interval and counts per scale point. "
                "`quality`: per-annotator gold accuracy and agreement; `charts`: the page's chart data."
            ),
            "properties": {
                "study": INTEGER,
                "kind": {"enum": list(StudyKind.values)},
                "judgments": INTEGER,
                "win_rates": {"type": "array", "items": {"type": "object"}},
                "ratings": {"type": "array", "items": {"type": "object"}},
                "per_plan": {"type": "array", "items": {"type": "object"}},
                "per_rubric_item": {"type": "array", "items": {"type": "object"}},
                "preference": {"type": "array", "items": {"type": "object"}},
                "people": {"type": "object"},
                "automatic": {"type": "object"},
                "comparisons": {"type": "array", "items": {"type": "object"}},
                "scale": {"type": "array", "items": {"type": "string"}},
                "intervals": {"type": "object"},
                "quality": {"type": "object"},
                "charts": {"type": "object"},
            },
        },
        "NewExport": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "format": {"enum": list(ExportFormat.values), "default": ExportFormat.REWARD},
                "keep_ties": {"type": "boolean", "default": False},
                "style": {"enum": list(RewardStyle.values), "default": RewardStyle.AUTO},
            },
        },
        "Export": {
            "type": "object",
            "properties": {
                "id": INTEGER,
                "study": INTEGER,
                "format": {"enum": list(ExportFormat.values)},
                "keep_ties": {"type": "boolean"},
                "style": {"type": "string"},
                "status": {"enum": list(ExportStatus.values)},
                "version": INTEGER,
                "rows": INTEGER,
                "total": INTEGER,
                "done": INTEGER,
                "percent": INTEGER,
                "sha256": {"type": "string"},
                "filename": {"type": "string"},
                "error": {"type": "string"},
                "created_at": {"type": "string"},
                "finished_at": TIME,
                "download_url": {"type": ["string", "null"]},
            },
        },
        "ExportList": {"type": "object", "properties": {"exports": {"type": "array", "items": _ref("Export")}}},
    }


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


ROW = {
    "type": "object",
    "description": "one item as the upload form reads it (the study kind's fields)",
    "properties": {"prompt": {"type": "string"}, "chosen": {"type": "string"}, "rejected": {"type": "string"}},
}


def study_paths() -> dict[str, Any]:
    base = "/api/studies/{study_id}"
    return {
        "/api/studies/": {
            "get": {
                "summary": "The studies you may see (yours and those shared with you; every study for an admin)",
                "security": SECURITY,
                "responses": {"200": _json("StudyList"), "401": ACCESS["401"], "403": ACCESS["403"]},
            },
            "post": {
                "summary": "Create a study (the study form's fields)",
                "security": SECURITY,
                "requestBody": _body("NewStudy"),
                "responses": {
                    "201": _json("Study", "Created"),
                    "400": _error("A bad field (`field` names it); nothing was created."),
                    "401": ACCESS["401"],
                    "403": ACCESS["403"],
                },
            },
        },
        base + "/": {
            "parameters": [STUDY_ID],
            "get": {
                "summary": "A study's settings",
                "security": SECURITY,
                "responses": {"200": _json("Study"), **ACCESS},
            },
        },
        base + "/items/": {
            "parameters": [STUDY_ID],
            "get": {
                "summary": "A page of the study's items, as stored (the item browser's search and filters)",
                "security": SECURITY,
                "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": OFFSET}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "status", "in": "query", "schema": {"enum": list(ITEM_STATUSES)}},
                    {"name": "q", "in": "query", "schema": {**TEXT, "maxLength": 200}},
                ],
                "responses": {"200": _json("Items"), "400": _error("A bad parameter."), **ACCESS},
            },
            "post": {
                "summary": "Upload items: a file as the upload form takes it (JSONL, JSON array, CSV, Parquet)",
                "description": (
                    "The body is the file (`Content-Encoding: gzip` for the transfer is undone first; a gzip file "
                    f"is read as gzip). At most {MAX_UPLOAD_BYTES // 2**20} MiB, as the form. Small files are read "
                    "at once (201, the report); large ones by a worker (202, the queued import: poll "
                    "/imports/{import_id}/). Invalid rows refuse the whole file (422, each named by line and field) "
                    "unless `import_valid_rows`."
                ),
                "security": SECURITY,
                "parameters": [
                    {"name": "filename", "in": "query", "schema": {**TEXT, "maxLength": limits.MAX_FILENAME}},
                    {"name": "import_valid_rows", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "flag_unsplittable", "in": "query", "schema": {"type": "boolean"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        "application/json": {"schema": {"type": "array", "minItems": 1, "items": ROW}},
                    },
                },
                "responses": {
                    "201": _json("Import", "Imported."),
                    "202": _json("Import", "Queued for a worker."),
                    "400": _error("A bad parameter, or a body that is not valid gzip."),
                    "413": _error("The file is over the upload limit."),
                    "415": _error("A Content-Encoding other than gzip."),
                    "422": _json("ImportRejected", "Nothing imported: the container or rows are invalid."),
                    **WRITE,
                },
            },
        },
        base + "/imports/{import_id}/": {
            "parameters": [STUDY_ID, IMPORT_ID],
            "get": {
                "summary": "An import's status and report (progress while a worker reads it)",
                "security": SECURITY,
                "responses": {"200": _json("Import"), **ACCESS},
            },
        },
        base + "/annotators/": {
            "parameters": [STUDY_ID],
            "get": {
                "summary": "Usernames assigned to the study",
                "security": SECURITY,
                "responses": {"200": _json("Annotators"), **ACCESS},
            },
            "post": {
                "summary": "Assign annotators, or take them off (their judgments stay)",
                "security": SECURITY,
                "requestBody": _body("AnnotatorChange"),
                "responses": {
                    "200": _json("Annotators"),
                    "400": _error("An unknown user, or one who is not an annotator (`field`: add[i])."),
                    **WRITE,
                },
            },
        },
        base + "/progress/": {
            "parameters": [STUDY_ID],
            "get": {
                "summary": "Items, judgments given and wanted, open leases: the study page's live numbers",
                "security": SECURITY,
                "responses": {"200": _json("Progress"), **ACCESS},
            },
        },
        base + "/results/": {
            "parameters": [STUDY_ID],
            "get": {
                "summary": "Everything the results page shows, with its 95% intervals, and annotator quality",
                "security": SECURITY,
                "responses": {"200": _json("Results"), **ACCESS},
            },
        },
        base + "/exports/": {
            "parameters": [STUDY_ID],
            "get": {
                "summary": "The study's exports, newest first",
                "security": SECURITY,
                "responses": {"200": _json("ExportList"), **ACCESS},
            },
            "post": {
                "summary": "Start an export (the export page's formats); poll it, then download its file",
                "security": SECURITY,
                "requestBody": _body("NewExport"),
                "responses": {"202": _json("Export", "Started."), "400": _error("A bad field."), **ACCESS},
            },
        },
        base + "/exports/{export_id}/": {
            "parameters": [STUDY_ID, EXPORT_ID],
            "get": {
                "summary": "An export's status",
                "security": SECURITY,
                "responses": {"200": _json("Export"), **ACCESS},
            },
        },
        base + "/exports/{export_id}/download/": {
            "parameters": [STUDY_ID, EXPORT_ID],
            "get": {
                "summary": "The export's file: the same bytes as the export page's download",
                "security": SECURITY,
                "responses": {
                    "200": {
                        "description": "The file (JSONL or CSV)",
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "302": {"description": "An export kept in an S3 bucket: its signed URL (Location), short-lived."},
                    "409": _error("The export is not done yet."),
                    **ACCESS,
                },
            },
        },
    }
