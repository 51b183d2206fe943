"""The worker API (`/api/worker/…`): a Django-free GPU worker claims, beats and finishes runs with its credential.

Small JSON bodies, a bearer token (`arb_w_…`), answers a worker can act on: 200 with what to do, 409 when the
run cannot be claimed here (not queued: drop the task; too few free slots: hand it back), 404 for a run this
worker does not own, 400 naming a bad field. The engine's own reports (metrics, logs, checkpoints) go through
the run-token ingest API as before; the worker posts the engine's captured output there too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from workers import services
from workers.models import WorkerCredential

MAX_BODY = 64 * 1024
INT32 = 2**31 - 1


class _Refused(Exception):
    def __init__(self, status: int, error: str, field: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.field = status, error, field


def _worker(request: HttpRequest) -> WorkerCredential:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    worker = services.worker_for_token(token)
    if worker is None:
        raise _Refused(401, "a worker token is required (Authorization: Bearer arb_w_…)")
    return worker


def _body(request: HttpRequest) -> dict[str, Any]:
    raw = request.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise _Refused(413, f"body larger than {MAX_BODY} bytes", "body")
    try:
        body = orjson.loads(raw or b"{}")  # a lone surrogate is not JSON (PostgreSQL cannot store it)
    except ValueError:
        raise _Refused(400, "body is not JSON", "body") from None
    if not isinstance(body, dict):
        raise _Refused(400, "must be a JSON object", "body")
    return body


def _int(body: dict[str, Any], name: str, *, lo: int, hi: int, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise _Refused(400, f"must be an integer in [{lo}, {hi}]", name)
    return value


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if (
        not isinstance(value, list)
        or len(value) > 256
        or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value)
    ):
        raise _Refused(400, "must be a list of at most 256 short strings", name)
    return [v for v in value if "\x00" not in v]


def _view(handler: Callable[..., dict[str, Any]]) -> Callable[..., JsonResponse]:
    @csrf_exempt
    def view(request: HttpRequest, **kwargs: Any) -> JsonResponse:
        if request.method != "POST":
            return JsonResponse({"error": "method not allowed"}, status=405, headers={"Allow": "POST"})
        if max(kwargs.get("run_id", 0), kwargs.get("job_id", 0)) > 2**63 - 1:
            return JsonResponse({"error": "no such run on this worker"}, status=404)
        try:
            worker = _worker(request)
            return JsonResponse(handler(worker, _body(request), **kwargs))
        except _Refused as refused:
            body = {"error": refused.error} | ({"field": refused.field} if refused.field else {})
            return JsonResponse(body, status=refused.status)
        except services.NotYours:
            return JsonResponse({"error": "no such run on this worker"}, status=404)

    return view


def _hello(worker: WorkerCredential, body: dict[str, Any]) -> dict[str, Any]:
    services.hello(worker=worker, queues=_strings(body, "queues"), slots=_strings(body, "slots"))
    return {"name": worker.name}


def _claim(worker: WorkerCredential, body: dict[str, Any], run_id: int) -> dict[str, Any]:
    free = _int(body, "free_slots", lo=0, hi=1024, default=1) or 0
    try:
        spec = services.claim(worker=worker, run_id=run_id, free_slots=free)
    except services.NeedsSlots as needs:
        raise _Refused(409, str(needs), "free_slots") from None
    if spec is None:
        raise _Refused(409, "the run is not queued (claimed elsewhere, or cancelled)")
    return spec


def _heartbeat(worker: WorkerCredential, body: dict[str, Any], run_id: int) -> dict[str, Any]:
    return services.heartbeat(worker=worker, run_id=run_id, pid=_int(body, "pid", lo=1, hi=INT32))


def _finish(worker: WorkerCredential, body: dict[str, Any], run_id: int) -> dict[str, Any]:
    exit_code = _int(body, "exit_code", lo=-INT32 - 1, hi=INT32)
    cancelled = body.get("cancelled", False)
    note = body.get("note", "")
    if not isinstance(cancelled, bool):
        raise _Refused(400, "must be true or false", "cancelled")
    if not isinstance(note, str) or "\x00" in note:
        raise _Refused(400, "must be a string without NUL", "note")
    status = services.finish(worker=worker, run_id=run_id, exit_code=exit_code, cancelled=cancelled, note=note)
    return {"status": status}


def _claim_sample(worker: WorkerCredential, body: dict[str, Any], job_id: int) -> dict[str, Any]:
    spec = services.claim_sample(worker=worker, job_id=job_id)
    if spec is None:
        raise _Refused(409, "the sampling job is not queued (claimed elsewhere, or cancelled)")
    return spec


def _sample_progress(worker: WorkerCredential, body: dict[str, Any], job_id: int) -> dict[str, Any]:
    done = _int(body, "done", lo=0, hi=INT32, default=0) or 0
    return services.sample_progress(worker=worker, job_id=job_id, done=done)


def _sample_finish(worker: WorkerCredential, body: dict[str, Any], job_id: int) -> dict[str, Any]:
    flags = {name: body.get(name, False) for name in ("ok", "cancelled")}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise _Refused(400, "must be true or false", name)
    error, backend, seconds = body.get("error", ""), body.get("backend", ""), body.get("seconds", 0.0)
    for name, value in (("error", error), ("backend", backend)):
        if not isinstance(value, str) or "\x00" in value:
            raise _Refused(400, "must be a string without NUL", name)
    if type(seconds) not in (int, float) or not 0 <= seconds <= 1e7:
        raise _Refused(400, "must be a number of seconds", "seconds")
    status = services.finish_sample(
        worker=worker, job_id=job_id, ok=flags["ok"], cancelled=flags["cancelled"], error=error[-4000:],
        backend=backend, seconds=float(seconds),
    )  # fmt: skip
    return {"status": status}


hello = _view(_hello)
claim_sample = _view(_claim_sample)
sample_progress = _view(_sample_progress)
sample_finish = _view(_sample_finish)
claim = _view(_claim)
heartbeat = _view(_heartbeat)
finish = _view(_finish)
