"""The studies API (mounted at /api/studies/): create a study, upload items, assign annotators, read progress
and results, start and download exports. What the study pages do, for scripts (arbiter_client.Api).

Auth as the runs API (training/api.py): a user API key (`Authorization: Bearer arb_u_…`) or the browser's
session; researchers and admins only (anyone else: 403). A study the user neither owns nor has been
shared is 404, as on the pages, so ids don't leak; a shared study is read-only (writes: 403, as the
pages' edit views). Errors are JSON `{"error": message, "field": name}`; every view calls the same
services and selectors as the pages, so the two cannot drift apart.
"""

from __future__ import annotations

import gzip
import tempfile
import zlib
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from arbiter.accounts.models import Role, User
from arbiter.db import busy_response
from arbiter.streaming import file_download
from artifacts import services as artifact_services
from evaluation import api_payloads, export, results, selectors, services
from evaluation.forms import MAX_UPLOAD_BYTES
from evaluation.models import ExportJob, ExportStatus, ImportJob, ImportStatus, Item, Study
from training.api import ApiError, _bearer, _int_param, _json_body, user_for_api_key
from training.payloads import PayloadError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_PAGE = 1000  # items per page
ApiView = Callable[..., HttpResponse | FileResponse]


# --------------------------------------------------------------------------- auth and plumbing


def _csrf_refused(request: HttpRequest) -> bool:
    """A write from a browser session must carry the CSRF token, as a form would (API keys need none)."""
    check = CsrfViewMiddleware(lambda _request: HttpResponse())
    return check.process_view(request, lambda _request: HttpResponse(), (), {}) is not None


def _researcher(request: HttpRequest) -> User:
    if request.user.is_authenticated:
        user: User = request.user
        if request.method not in SAFE_METHODS and _csrf_refused(request):
            raise ApiError(403, "a write from a browser session needs its CSRF token (scripts send an API key)")
    else:
        key_user = user_for_api_key(_bearer(request))
        if key_user is None:
            raise ApiError(401, "log in or send an API key (Authorization: Bearer arb_u_…)")
        user = key_user
    if not user.is_researcher:
        raise ApiError(403, "the studies API is for researchers")
    return user


def _study(request: HttpRequest, study_id: int, *, edit: bool = False) -> tuple[User, Study]:
    user = _researcher(request)
    try:
        study = selectors.get_study_for(user=user, study_id=study_id)
    except Http404:
        raise ApiError(404, "no such study") from None
    if edit and not selectors.can_edit_study(user=user, study=study):
        raise ApiError(403, "only the study's owner may change it (it is shared with you to read)")
    return user, study


def api_view(*methods: str) -> Callable[[ApiView], ApiView]:
    """JSON errors for refusals (ApiError, a bad body), 503 for a busy database, 405 for other methods."""

    def decorate(view: ApiView) -> ApiView:
        @csrf_exempt  # bearer keys carry no cookie to forge; sessions are checked in _researcher
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse | FileResponse:
            if request.method not in methods:
                return JsonResponse({"error": "method not allowed"}, status=405, headers={"Allow": ", ".join(methods)})
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            except PayloadError as exc:
                return ApiError(400, exc.message, exc.field).response()
            except OperationalError as exc:
                return busy_response(exc)

        return wrapped

    return decorate


def _absolute(request: HttpRequest, name: str, *args: int) -> str:
    return request.build_absolute_uri(reverse(name, args=list(args)))


# --------------------------------------------------------------------------- JSON shapes


def study_json(request: HttpRequest, study: Study, user: User) -> dict[str, Any]:
    return {
        "id": study.pk,
        "name": study.name,
        "kind": study.kind,
        "owner": study.owner.username,
        "instructions": study.instructions,
        "text_format": study.text_format,
        "overlap": study.overlap,
        "lease_seconds": study.lease_seconds,
        "accuracy_threshold": study.accuracy_threshold,
        "scale_labels": study.scale if study.kind == "rating" else [],
        "annotators": sorted(u.username for u in study.annotators.all()),
        "shared_with": sorted(u.username for u in study.shared_with.all()),
        "item_count": study.item_count,
        "created_at": study.created_at.isoformat(),
        "can_edit": selectors.can_edit_study(user=user, study=study),
        "url": _absolute(request, "evaluation:study_detail", study.pk),
        "results_url": _absolute(request, "evaluation:results", study.pk),
    }


def import_json(job: ImportJob) -> dict[str, Any]:
    valid = job.rows_read - job.error_count
    body: dict[str, Any] = {
        "id": job.pk,
        "status": job.status,
        "filename": job.filename,
        "container": job.container,
        "size_bytes": job.size_bytes,
        "bytes_read": job.bytes_read,
        "percent": job.percent,
        "rows_read": job.rows_read,
        "created": job.created_items,
        "waiting": job.waiting_items,
        "attached": job.attached,
        "verdicts": job.verdicts,
        "flagged": job.flagged_rows,
        "valid_count": max(valid, 0),
        "error_count": job.error_count,
        "errors": job.errors or [],
        "import_valid_rows": job.import_valid_rows,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if job.status == ImportStatus.REJECTED:
        body["error"] = job.message or f"{job.error_count} invalid rows: nothing was imported"
    elif job.status == ImportStatus.FAILED:
        body["error"] = job.message or "the import failed"
    return body


def item_json(item: Item) -> dict[str, Any]:
    return {
        "id": item.pk,
        "position": item.position,
        "external_id": item.external_id,
        "payload": item.payload,
        "is_gold": item.is_gold,
        "expected": item.expected,
        "waiting": item.waiting,
        "judgments": item.judgment_count,
        "overlap": item.overlap,
    }


def export_json(request: HttpRequest, job: ExportJob) -> dict[str, Any]:
    done = job.status == ExportStatus.DONE
    return {
        "id": job.pk,
        "study": job.study_id,
        "format": job.format,
        "keep_ties": job.keep_ties,
        "style": job.style,
        "status": job.status,
        "version": job.version,
        "rows": job.rows,
        "total": job.total,
        "done": job.done,
        "percent": job.percent,
        "sha256": job.sha256,
        "filename": Path(job.path).name if done and job.path else "",
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "download_url": _absolute(request, "evaluation_api:export_download", job.study_id, job.pk) if done else None,
    }


# --------------------------------------------------------------------------- studies


def _users(names: list[str], field: str, *, roles: set[str], exclude: User | None = None) -> list[User]:
    found = {u.username: u for u in User.objects.filter(username__in=names, is_active=True)}
    out = []
    for i, name in enumerate(names):
        user = found.get(name)
        if user is None:
            raise ApiError(400, f"no user {name!r}", f"{field}[{i}]")
        if user.role not in roles and not (Role.ADMIN in roles and user.is_superuser):
            raise ApiError(400, f"{name} is not {' or '.join(sorted(roles))}", f"{field}[{i}]")
        if exclude is not None and user.pk == exclude.pk:
            raise ApiError(400, "the owner already has the study", f"{field}[{i}]")
        out.append(user)
    return out


@api_view("GET", "POST")
def studies(request: HttpRequest) -> HttpResponse:
    """GET: the studies the user may see. POST: create one (the study form's fields, as JSON)."""
    user = _researcher(request)
    if request.method == "GET":
        rows = selectors.study_list_for(user=user).prefetch_related("annotators", "shared_with")
        return JsonResponse({"studies": [study_json(request, s, user) for s in rows]})
    new = api_payloads.parse_new_study(_json_body(request))
    annotators = _users(new.annotators, "annotators", roles={Role.ANNOTATOR})
    shared = _users(new.shared_with, "shared_with", roles={Role.RESEARCHER, Role.ADMIN}, exclude=user)
    study = services.create_study(
        owner=user,
        name=new.name,
        kind=new.kind,
        instructions=new.instructions,
        overlap=new.overlap,
        lease_seconds=new.lease_seconds,
        accuracy_threshold=new.accuracy_threshold,
        scale_labels=new.scale_labels,
        annotators=annotators,
        shared_with=shared,
        text_format=new.text_format,
    )
    return JsonResponse(study_json(request, study, user), status=201)


@api_view("GET")
def study(request: HttpRequest, study_id: int) -> HttpResponse:
    user, found = _study(request, study_id)
    return JsonResponse(study_json(request, found, user))


# --------------------------------------------------------------------------- items


def _upload_body(request: HttpRequest) -> IO[bytes]:
    """The request body as a file (in memory up to the background threshold, then on disk), transfer gzip undone.

    The upload form's size limit applies to the file itself; the importer reads a file that was gzip before
    the transfer as the form would.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in {"", "identity", "gzip"}:
        raise ApiError(415, "Content-Encoding must be gzip or absent", "Content-Encoding")
    source: Any = request
    if encoding == "gzip":
        source = gzip.GzipFile(fileobj=request, mode="rb")  # type: ignore[call-overload]  # HttpRequest has read()
    spool = tempfile.SpooledTemporaryFile(max_size=settings.EVALUATION_IMPORT_BACKGROUND_BYTES)  # noqa: SIM115
    total = 0
    try:
        while chunk := source.read(1 << 20):
            total += len(chunk)
            if total > MAX_UPLOAD_BYTES:
                raise ApiError(413, f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", "body")
            spool.write(chunk)
    except (OSError, EOFError, zlib.error):
        spool.close()
        raise ApiError(400, "body is not valid gzip", "body") from None
    except ApiError:
        spool.close()
        raise
    spool.seek(0)
    return spool


def _item_page(request: HttpRequest, study: Study) -> HttpResponse:
    offset = _int_param(request, "offset", 0, lo=0, hi=2**31 - 1) or 0
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_PAGE) or 100
    status = request.GET.get("status", "all")
    if status not in selectors.ITEM_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(selectors.ITEM_STATUSES)}", "status")
    query = request.GET.get("q", "")
    if len(query) > 200 or "\x00" in query:
        raise ApiError(400, "q must be at most 200 characters, without NUL", "q")
    items = selectors.item_list(study=study, query=query.strip(), status=status)
    page = list(items[offset : offset + limit])
    return JsonResponse(
        {"items": [item_json(i) for i in page], "total": items.count(), "offset": offset, "limit": limit}
    )


@api_view("GET", "POST")
def items(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: a page of items. POST: upload a file of items (the body: JSONL, JSON array, CSV or Parquet).

    201 with the import's report when it was read at once; 202 with the queued import when it is large
    enough for a worker (poll its status); 422 naming each bad row's line and field, nothing imported.
    """
    if request.method == "GET":
        _, found = _study(request, study_id)
        return _item_page(request, found)
    user, found = _study(request, study_id, edit=True)
    name = api_payloads.filename(request.GET.get("filename"))
    valid_rows = api_payloads.query_flag(request.GET.get("import_valid_rows"), "import_valid_rows")
    flag = api_payloads.query_flag(request.GET.get("flag_unsplittable"), "flag_unsplittable")
    body = _upload_body(request)
    try:
        outcome = services.submit_import(
            study=found,
            data=body,
            filename=name,
            import_valid_rows=valid_rows,
            flag_unsplittable=flag,
            requested_by=user,
        )
    except services.ImportRejected as exc:
        return JsonResponse(
            {
                "status": "rejected",
                "error": exc.message or f"{exc.error_count} invalid rows: nothing was imported",
                "field": "body",
                "errors": [e.as_dict() for e in exc.errors],
                "error_count": exc.error_count,
                "valid_count": exc.valid_count,
            },
            status=422,
        )
    finally:
        body.close()
    if isinstance(outcome, ImportJob):
        return JsonResponse(import_json(outcome), status=202)
    job = ImportJob.objects.get(pk=outcome.job_id or 0)
    return JsonResponse(import_json(job), status=201)


@api_view("GET")
def import_status(request: HttpRequest, study_id: int, import_id: int) -> HttpResponse:
    _, found = _study(request, study_id)
    try:
        job = selectors.import_for(study=found, import_id=import_id)
    except Http404:
        raise ApiError(404, "no such import in this study") from None
    return JsonResponse(import_json(job))


# --------------------------------------------------------------------------- annotators, progress, results


@api_view("GET", "POST")
def annotators(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: usernames assigned. POST `{"add": [...], "remove": [...]}`: change them (the owner only)."""
    if request.method == "GET":
        _, found = _study(request, study_id)
        return JsonResponse({"annotators": sorted(found.annotators.values_list("username", flat=True))})
    _, found = _study(request, study_id, edit=True)
    add, remove = api_payloads.parse_annotator_change(_json_body(request))
    try:
        names = services.change_annotators(
            study=found,
            add=_users(add, "add", roles={Role.ANNOTATOR}),
            remove=_users(remove, "remove", roles={Role.ANNOTATOR, Role.RESEARCHER, Role.ADMIN}),
        )
    except ValidationError as exc:
        raise ApiError(400, "; ".join(exc.messages), "add") from None
    return JsonResponse({"annotators": names})


@api_view("GET")
def progress(request: HttpRequest, study_id: int) -> HttpResponse:
    """Items, judgments given and wanted (items × overlap), open leases: the study page's live numbers."""
    _, found = _study(request, study_id)
    return JsonResponse(dict(selectors.study_progress(study_id=found.pk)))


@api_view("GET")
def study_results(request: HttpRequest, study_id: int) -> HttpResponse:
    """Everything the results page shows, from the same computation (evaluation.results.study_results)."""
    _, found = _study(request, study_id)
    data = results.results_json(results.study_results(study=found), quality=selectors.study_quality(study=found))
    return JsonResponse({"study": found.pk, **data})


# --------------------------------------------------------------------------- exports


def _export(study: Study, export_id: int) -> ExportJob:
    try:
        return selectors.export_for(study=study, export_id=export_id)
    except Http404:
        raise ApiError(404, "no such export of this study") from None


@api_view("GET", "POST")
def exports(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: the study's exports, newest first. POST: start one (the export page's form), 202 while it runs."""
    user, found = _study(request, study_id)
    if request.method == "GET":
        jobs = found.exports.order_by("-created_at", "-id")[:100]
        return JsonResponse({"exports": [export_json(request, j) for j in jobs]})
    wanted = api_payloads.parse_export(_json_body(request))
    job = export.start_export(
        study=found, requested_by=user, format=wanted.format, keep_ties=wanted.keep_ties, style=wanted.style
    )
    return JsonResponse(export_json(request, job), status=202)


@api_view("GET")
def export_status(request: HttpRequest, study_id: int, export_id: int) -> HttpResponse:
    _, found = _study(request, study_id)
    return JsonResponse(export_json(request, _export(found, export_id)))


@api_view("GET")
def export_download(request: HttpRequest, study_id: int, export_id: int) -> FileResponse | HttpResponseRedirect:
    """The export's file, the same bytes as the export page's download; 409 while it is being written.

    An export kept in an S3 bucket is a redirect to a short-lived signed URL, as on the page: the bucket
    serves the bytes (the SDK follows it without sending the API key there).
    """
    _, found = _study(request, study_id)
    job = _export(found, export_id)
    if job.status != ExportStatus.DONE:
        raise ApiError(409, f"the export is {job.status}: download it once it is done", "export_id")
    if job.path.startswith("s3://"):
        return HttpResponseRedirect(artifact_services.download_url(job.path, filename=job.path.rsplit("/", 1)[-1]))
    path = Path(job.path)
    root = Path(settings.ARTIFACT_ROOT).resolve()
    if not path.is_file() or root not in path.resolve().parents:
        raise ApiError(404, "this export has no file (it was deleted)")
    return file_download(path, filename=path.name)
