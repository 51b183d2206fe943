"""The HTTP API: ingest with a per-run token, run creation with a user API key, chart reads for the dashboard.

Auth: `Authorization: Bearer <token>`. Run tokens (arb_r_…) may only write to their own run; user
API keys (arb_u_…) create runs and read what their user may see; the browser reads with its session.
Errors are JSON `{"error": message, "field": json-path}`; a bad batch is refused whole (400).
"""

from __future__ import annotations

import hmac
import time
import zlib
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError, close_old_connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from arbiter.db import busy_is_503, busy_response
from training import payloads, selectors
from training.models import ACTIVE_STATUSES, ApiToken, Run, RunStatus, hash_token
from training.openapi import openapi_document
from training.services import ingest, run_records, runs

MAX_BODY_BYTES = 32 * 2**20  # after decompression: 50,000 points are ~3 MB of JSON


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return JsonResponse(body, status=self.status)


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else ""


def _json_body(request: HttpRequest) -> Any:
    """Read a JSON body, gzip-compressed or not, refusing bombs past MAX_BODY_BYTES."""
    # request.body would apply DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), too small for a batch.
    raw = request.read(MAX_BODY_BYTES + 1)
    if request.headers.get("Content-Encoding", "") == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, MAX_BODY_BYTES + 1)
        except zlib.error:
            raise ApiError(400, "body is not valid gzip", "body") from None
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes", "body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", "body") from None


def run_for_token(*, run_id: int, token: str) -> Run:
    """The run this token belongs to; 401 for a missing or wrong token (and for an unknown run).

    A run token is a credential of the run while it is queued or running, like a CI job's token for
    the life of its job: once the run has ended (succeeded, failed, cancelled, lost) it writes nothing
    more (401, RFC 6750's answer to an expired token). The engine and the SDK send everything before
    the end is recorded: the supervisor records it after the engine process has exited (the engine
    flushes before exiting), and the SDK sends its status call after every point and line it holds.

    One exception: a script's run (recipe "external") that the sweep marked lost keeps its token. Lost
    was the platform's guess from a silent heartbeat (a laptop asleep, a network cut); the script's
    next report revives the run (runs.external_heartbeat), as W&B revives a run it had marked crashed.
    """
    if not token.startswith("arb_r_"):
        raise ApiError(401, "a run token is required (Authorization: Bearer arb_r_…)")
    run = (
        Run.objects.filter(id=run_id)
        .only("id", "token_hash", "recipe", "status", "event_seq", "heartbeat_at", "cancel_requested_at", "owner_id")
        .first()
    )
    # compare_digest: the comparison takes the same time wherever the first difference is.
    if run is None or not run.token_hash or not hmac.compare_digest(run.token_hash, hash_token(token)):
        raise ApiError(401, "invalid run token")
    if run.status not in ACTIVE_STATUSES and not (run.is_external and run.status == RunStatus.LOST):
        raise ApiError(401, f"run token expired: run #{run.id} has ended ({run.status})")
    return run


def user_for_api_key(token: str) -> Any:
    if not token.startswith("arb_u_"):
        return None
    key = ApiToken.objects.select_related("user").filter(token_hash=hash_token(token), revoked_at__isnull=True).first()
    if key is None or not key.user.is_active:
        return None
    if key.last_used_at is None or key.last_used_at < timezone.now() - timedelta(minutes=5):
        ApiToken.objects.filter(id=key.id).update(last_used_at=timezone.now())
    return key.user


def _reader(request: HttpRequest) -> Any:
    """The user reading: the browser session, or an API key's owner."""
    if request.user.is_authenticated:
        return request.user
    user = user_for_api_key(_bearer(request))
    if user is None:
        raise ApiError(401, "log in or send an API key (Authorization: Bearer arb_u_…)")
    return user


def _researcher_by_key(request: HttpRequest, doing: str) -> Any:
    """The researcher whose user API key the request carries (never the session's cookie: these routes write
    without CSRF), or an ApiError: 401 without a key, 403 for an annotator."""
    user = user_for_api_key(_bearer(request))
    if user is None:
        raise ApiError(401, "a user API key is required (Authorization: Bearer arb_u_…)")
    if not user.is_researcher:
        raise ApiError(403, f"only researchers may {doing}")
    return user


def _readable_run(request: HttpRequest, run_id: int) -> Run:
    try:
        return selectors.get_run_for(user=_reader(request), run_id=run_id)
    except Http404:
        raise ApiError(404, "no such run") from None


# --- ingest (run token) ----------------------------------------------------------------------
def _ingest(kind: str, run_id: int, request: HttpRequest) -> dict[str, Any]:
    run = run_for_token(run_id=run_id, token=_bearer(request))  # before reading the body: refuse strangers cheaply
    body = _json_body(request)
    now = time.time()
    if run.is_external:
        # Any report from a script is a sign of life (a script that only logs metrics stays running);
        # the SDK calls /heartbeat/ when it has had nothing else to send.
        run = runs.external_heartbeat(run=run, explicit=kind == "heartbeat")
    try:
        if kind == "heartbeat":
            return {
                "status": run.status,
                "heartbeat_timeout_s": settings.RUN_HEARTBEAT_TIMEOUT,
                "cancel_requested": run.cancel_requested_at is not None,
            }
        if kind == "metrics":
            r = ingest.record_metrics(run=run, batch=payloads.parse_metrics(body, now=now))
            return {"received": r.received, "written": r.written, "seq": r.seq}
        if kind == "system":
            r = ingest.record_metrics(run=run, batch=payloads.parse_system(body, now=now))
            return {"received": r.received, "written": r.written, "seq": r.seq}
        if kind == "logs":
            batch = payloads.parse_logs(body, now=now)
            return {"received": len(batch.seqs), "written": ingest.record_logs(run_id=run.id, batch=batch)}
        if kind == "checkpoints":
            step, path = payloads.parse_checkpoint(body)
            ckpt = ingest.record_checkpoint(run=run, step=step, path=path)
            return {"step": ckpt.step, "path": ckpt.path}
        if kind == "tables":
            table = payloads.parse_table(body)
            written = ingest.record_table(run=run, batch=table)
            return {"name": table.name, "step": table.step, "rows": len(table.rows), "written": int(written)}
        if kind == "status":
            status, exit_code = payloads.parse_status(body)
            run = runs.set_status_from_client(run=Run.objects.get(id=run.id), status=status, exit_code=exit_code)
            return {"status": run.status}
    except payloads.PayloadError as exc:
        raise ApiError(400, exc.message, exc.field) from None
    except ValidationError as exc:
        raise ApiError(409, "; ".join(exc.messages)) from None
    except ingest.TableLimit as exc:
        raise ApiError(409, str(exc)) from None
    raise ApiError(404, "unknown endpoint")


def _ingest_with_connection(kind: str, run_id: int, request: HttpRequest) -> dict[str, Any]:
    # Pool threads outlive requests, so Django's request-end cleanup never sees their connection:
    # apply CONN_MAX_AGE (reuse, or close when expired/broken) here, around each batch.
    close_old_connections()
    try:
        return _ingest(kind, run_id, request)
    finally:
        close_old_connections()


_ingest_in_thread = sync_to_async(_ingest_with_connection, thread_sensitive=False)


def _ingest_view(
    kind: str, read: Callable[[HttpRequest, int], HttpResponse] | None = None
) -> Callable[[HttpRequest, int], Coroutine[Any, Any, HttpResponse]]:
    # Async, with the database work in a pool thread: concurrent batches (several runs) overlap
    # instead of queueing on the one thread Django gives synchronous views under ASGI.
    @csrf_exempt
    async def view(request: HttpRequest, run_id: int) -> HttpResponse:
        if request.method == "GET" and read is not None:
            return await sync_to_async(read)(request, run_id)
        if request.method != "POST":
            return JsonResponse({"error": "method not allowed"}, status=405)
        try:
            return JsonResponse(await _ingest_in_thread(kind, run_id, request))
        except ApiError as exc:
            return exc.response()
        except OperationalError as exc:  # the transaction rolled back: nothing of the batch was written
            return busy_response(exc)

    view.__name__ = f"ingest_{kind}"
    return view


# --- the run resource: what a run is, where it came from, what came of it -----------------------
LIST_LIMIT = {"lo": 1, "hi": 200}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def runs_json(runs_: list[Run], *, user: Any) -> list[dict[str, Any]]:
    """The runs as the API shows them, lineage included: a parent or child is named only when `user` may see it
    (another researcher's private retry of a shared run is not leaked). Three queries for any number of runs."""
    ids = [r.id for r in runs_]
    parents = {r.parent_id for r in runs_ if r.parent_id is not None}
    visible = selectors.visible_runs(user=user)
    seen_parents = set(visible.filter(id__in=parents).values_list("id", flat=True)) if parents else set()
    children: dict[int, list[int]] = {}
    for parent_id, child_id in (
        visible.filter(parent_id__in=ids).order_by("created_at", "id").values_list("parent_id", "id")
    ):
        children.setdefault(parent_id, []).append(child_id)
    return [
        {
            "id": r.id,
            "name": r.name,
            "recipe": r.recipe,
            "owner": r.owner.username,
            "queue": r.queue,
            "gpus": r.gpus,
            "shared": r.shared,
            "status": r.status,
            "exit_code": r.exit_code,
            "created_at": _iso(r.created_at),
            "started_at": _iso(r.started_at),
            "finished_at": _iso(r.finished_at),
            "duration_s": r.duration_s,
            "origin": r.origin,
            "parent": r.parent_id if r.parent_id in seen_parents else None,
            "children": children.get(r.id, []),
            "archived": r.archived_at is not None,
            "archived_at": _iso(r.archived_at),
            "tags": sorted(t.name for t in r.tags.all()),
        }
        for r in runs_
    ]


def _run_list(request: HttpRequest) -> JsonResponse:
    """The runs the caller may see, newest first, `limit` at a time; `next` is the `before` of the next page.
    Filters: archived, status, tag, recipe (exactly), q (a part of the name, any case)."""
    user = _reader(request)
    if not user.is_researcher:
        raise ApiError(403, "only researchers have runs")
    limit = _int_param(request, "limit", 50, **LIST_LIMIT)
    before = _int_param(request, "before", None, **ID_RANGE)
    archived = request.GET.get("archived", "false")
    if archived not in {"true", "false", "all"}:
        raise ApiError(400, "archived must be true, false or all", "archived")
    status = request.GET.get("status", "")
    if status and status not in RunStatus.values:
        raise ApiError(400, f"status must be one of {', '.join(RunStatus.values)}", "status")
    qs = selectors.visible_runs(user=user).select_related("owner").prefetch_related("tags").order_by("-id")
    if archived != "all":
        qs = qs.filter(archived_at__isnull=archived == "false")
    if status:
        qs = qs.filter(status=status)
    if tag := request.GET.get("tag", ""):
        qs = qs.filter(tags__name=tag.replace("\x00", ""))
    if recipe := request.GET.get("recipe", ""):
        if len(recipe) > payloads.MAX_RECIPE:
            raise ApiError(400, f"recipe must be at most {payloads.MAX_RECIPE} characters", "recipe")
        qs = qs.filter(recipe=recipe)
    if q := request.GET.get("q", ""):
        if len(q) > payloads.MAX_NAME_QUERY:
            raise ApiError(400, f"q must be at most {payloads.MAX_NAME_QUERY} characters", "q")
        qs = qs.filter(name__icontains=q)
    if before is not None:
        qs = qs.filter(id__lt=before)
    assert limit is not None
    page = list(qs[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return JsonResponse({"runs": runs_json(page, user=user), "next": page[-1].id if more else None})


# --- run creation (user API key) ---------------------------------------------------------------
@csrf_exempt
@require_http_methods(["GET", "POST"])
@busy_is_503
def runs_collection(request: HttpRequest) -> JsonResponse:
    """GET: the runs the caller may see (session or API key). POST: a run for a script (API key)."""
    if request.method == "GET":
        try:
            return _run_list(request)
        except ApiError as exc:
            return exc.response()
    return _run_create(request)


def _run_create(request: HttpRequest) -> JsonResponse:
    try:
        user = _researcher_by_key(request, "create runs")
    except ApiError as exc:
        return exc.response()
    try:
        name, config, tags = payloads.parse_new_run(_json_body(request))
    except payloads.PayloadError as exc:
        return ApiError(400, exc.message, exc.field).response()
    except ApiError as exc:
        return exc.response()
    run, token = runs.create_external_run(owner=user, name=name, config=config, tags=tags)
    page = request.build_absolute_uri(reverse("training:run_detail", args=[run.id]))
    return JsonResponse({"id": run.id, "token": token, "url": page, "status": run.status}, status=201)


LAUNCH_FIELDS = frozenset({"recipe", "queue", "config", "gpus", "name", "tags", "shared"})  # not config fields


@csrf_exempt
@require_http_methods(["POST"])
@busy_is_503
def run_launch(request: HttpRequest) -> JsonResponse:
    """Launch a platform run (what the launch form does): 201, or 422 naming the config field at fault."""
    try:
        user = _researcher_by_key(request, "launch runs")
    except ApiError as exc:
        return exc.response()
    try:
        recipe, config, name, queue, tags, shared, gpus = payloads.parse_launch(_json_body(request))
    except payloads.PayloadError as exc:
        return ApiError(400, exc.message, exc.field).response()
    except ApiError as exc:
        return exc.response()
    try:
        run = runs.launch_run(
            owner=user, recipe=recipe, config=config, name=name, queue=queue, tags=tags, shared=shared, gpus=gpus
        )
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            field, messages = next(iter(exc.message_dict.items()))
            where = field if field in LAUNCH_FIELDS else f"config.{field}"
            return ApiError(422, " ".join(messages), where).response()
        return ApiError(422, " ".join(exc.messages)).response()
    page = request.build_absolute_uri(reverse("training:run_detail", args=[run.id]))
    return JsonResponse({"id": run.id, "url": page, "status": run.status, "gpus": run.gpus}, status=201)


# --- reads (session or API key) ----------------------------------------------------------------
def _int_param(request: HttpRequest, name: str, default: int | None = None, *, lo: int, hi: int) -> int | None:
    """An integer query parameter in [lo, hi]; anything else (inf, 1e400, 2.5, "x") is a 400 naming it."""
    raw = request.GET.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", name) from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}", name)
    return value


STEP_RANGE = {"lo": -payloads.MAX_STEP, "hi": payloads.MAX_STEP}  # a zoomed chart may ask from below 0
BUCKET_RANGE = {"lo": 1, "hi": 1_000_000}  # accepted, then clamped to what the selector draws
ID_RANGE = {"lo": 0, "hi": 2**63 - 1}


@csrf_exempt  # DELETE takes a user API key only (never the session's cookie); GET is a read
@require_http_methods(["GET", "DELETE"])
@busy_is_503
def run_state(request: HttpRequest, run_id: int) -> HttpResponse:
    """GET: backlog head for the live page: sequence number first, then status and the series it has.
    DELETE: the run and everything it logged, as its page deletes it."""
    if request.method == "DELETE":
        return _run_delete(request, run_id)
    try:
        user = _reader(request)
        run = selectors.get_run_for(user=user, run_id=run_id)
    except ApiError as exc:
        return exc.response()
    except Http404:
        return ApiError(404, "no such run").response()
    return JsonResponse(
        {
            **runs_json([run], user=user)[0],
            "seq": run.event_seq,
            **runs.status_info(run),
            "keys": [s["key__name"] for s in selectors.run_summaries(run=run)],
        }
    )


def _run_delete(request: HttpRequest, run_id: int) -> HttpResponse:
    """As the run page's delete (run_records.delete_run): the owner only (anyone else, even one it is shared
    with, gets the 404 of a run that does not exist), never while active or while something depends on it
    (409, naming what depends on it as this user may be told of it); 204 once deleted, its files then removed
    from the artifact store."""
    try:
        user = _researcher_by_key(request, "delete runs")
    except ApiError as exc:
        return exc.response()
    try:
        run = selectors.get_run_for(user=user, run_id=run_id, for_change=True)
    except Http404:
        return ApiError(404, "no such run").response()
    if run.is_active:
        return ApiError(409, f"Run #{run.id} is {run.status}: cancel it before deleting it.").response()
    try:
        run_records.delete_run(run=run, by=user)
    except ValidationError as exc:  # HasDependants among them: its message names what needs the run
        return ApiError(409, " ".join(exc.messages)).response()
    return HttpResponse(status=204)


def _key_param(request: HttpRequest) -> str:
    key = request.GET.get("key", "")
    if not key:
        raise ApiError(400, "key is required", "key")
    if not payloads.KEY_RE.fullmatch(key):  # no stored key looks otherwise (and NUL never reaches the database)
        raise ApiError(400, "key must be 1-200 letters, digits, spaces or _.:/@%+-", "key")
    return key


@require_GET
@busy_is_503
def run_series(request: HttpRequest, run_id: int) -> JsonResponse:
    """`?key=loss[&start=&end=][&buckets=]`: min/max per bucket; raw points once zoomed in far enough."""
    try:
        run = _readable_run(request, run_id)
        key = _key_param(request)
        series = selectors.metric_series(
            run_id=run.id,
            key=key,
            start=_int_param(request, "start", **STEP_RANGE),
            end=_int_param(request, "end", **STEP_RANGE),
            buckets=_int_param(request, "buckets", selectors.DEFAULT_BUCKETS, **BUCKET_RANGE)
            or selectors.DEFAULT_BUCKETS,
        )
    except ApiError as exc:
        return exc.response()
    return JsonResponse(series)


@require_GET
@busy_is_503
def run_log_lines(request: HttpRequest, run_id: int) -> JsonResponse:
    try:
        run = _readable_run(request, run_id)
        after = _int_param(request, "after", 0, **ID_RANGE) or 0
    except ApiError as exc:
        return exc.response()
    return JsonResponse({"lines": selectors.log_tail(run_id=run.id, after_id=after)})


def _keys_param(request: HttpRequest) -> list[str] | None:
    """`keys=a,b` and/or repeated `key=`; None (every series) when neither is given."""
    names = [k for raw in request.GET.getlist("keys") for k in raw.split(",") if k] + request.GET.getlist("key")
    if not names and "keys" not in request.GET and "key" not in request.GET:
        return None
    for name in names:
        if not payloads.KEY_RE.fullmatch(name):
            raise ApiError(
                400, f"{name[:50]!r} is not a metric name (1-200 letters, digits, spaces or _.:/@%+-)", "keys"
            )
    if len(names) > 1000:
        raise ApiError(400, "at most 1000 keys per call", "keys")
    return names


@require_GET
@busy_is_503
def run_history(request: HttpRequest, run_id: int) -> HttpResponse:
    """Every point of the run's series in one call: `?keys=a,b&start=&end=&format=json|csv|parquet`."""
    from training import history  # pyarrow: loaded by the first history request, not by every worker

    try:
        run = _readable_run(request, run_id)
        fmt = request.GET.get("format", "json")
        if fmt not in history.FORMATS:
            raise ApiError(400, f"format must be one of {sorted(history.FORMATS)}", "format")
        keys = _keys_param(request)
        start = _int_param(request, "start", **STEP_RANGE)
        end = _int_param(request, "end", **STEP_RANGE)
        try:
            series = selectors.run_history(run_id=run.id, keys=keys, start=start, end=end)
        except selectors.HistoryTooLarge as exc:
            raise ApiError(
                413,
                f"{exc.points:,} points is more than {selectors.MAX_HISTORY_POINTS:,} per call: "
                "ask for fewer keys or a step range (start, end)",
                "keys",
            ) from None
    except ApiError as exc:
        return exc.response()
    if fmt == "csv":
        body = history.as_csv(series)
    elif fmt == "parquet":
        body = history.as_parquet(series)
    else:
        body = history.as_json(run_id=run.id, series=series, start=start, end=end)
    response = HttpResponse(body, content_type=history.FORMATS[fmt])
    if fmt != "json":
        response["Content-Disposition"] = f'attachment; filename="run-{run.id}-history.{fmt}"'
    return response


@require_GET
@busy_is_503
def run_table_list(request: HttpRequest, run_id: int) -> JsonResponse:
    """`?name=samples`: the steps that have a table; `&step=N`: that table's columns and rows."""
    try:
        run = _readable_run(request, run_id)
        name = request.GET.get("name", "samples")
        if not payloads.TABLE_NAME_RE.fullmatch(name):
            raise ApiError(400, "name must be 1-64 letters, digits, spaces or _.:/@%+-", "name")
        step = _int_param(request, "step", lo=0, hi=payloads.MAX_STEP - 1)
    except ApiError as exc:
        return exc.response()
    if step is None:
        return JsonResponse(
            {"name": name, "names": selectors.table_names(run=run), "steps": selectors.table_steps(run=run, name=name)}
        )
    table = selectors.table_at(run=run, name=name, step=step)
    if table is None:
        return ApiError(404, f"no table {name!r} at step {step}", "step").response()
    return JsonResponse({"name": table.name, "step": table.step, "columns": table.columns, "rows": table.rows})


# POST ingests with the run token; GET reads what the page and scripts chart.
run_metrics = _ingest_view("metrics", read=run_series)
run_logs = _ingest_view("logs", read=run_log_lines)
run_system = _ingest_view("system")
run_checkpoints = _ingest_view("checkpoints")
run_heartbeat = _ingest_view("heartbeat")
run_tables = _ingest_view("tables", read=run_table_list)
run_status = _ingest_view("status", read=run_state)


def openapi_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_document(server=request.build_absolute_uri("/").rstrip("/")))


def api_docs(request: HttpRequest) -> HttpResponse:
    return render(request, "training/api_docs.html", {"doc": openapi_document(server="")})
