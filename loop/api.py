"""The loop's HTTP API (read only): lineage of a run or a study, and the leaderboard, as JSON.

Auth as the rest of the API: the browser's session, or a user API key (`Authorization: Bearer arb_u_…`).
Anything the reader may not see is 404 (a run or study) or left out (a link inside a lineage).
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from evaluation.models import ExportJob, Study
from evaluation.selectors import get_study_for
from loop import selectors
from loop.models import Policy
from training.api import user_for_api_key
from training.models import Run
from training.selectors import get_run_for


def _reader(request: HttpRequest) -> Any:
    if request.user.is_authenticated:
        return request.user
    header = request.headers.get("Authorization", "")
    return user_for_api_key(header[7:].strip()) if header.startswith("Bearer ") else None


def _error(status: int, message: str, field: str | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JsonResponse(body, status=status)


def run_ref(run: Run) -> dict[str, Any]:
    return {"id": run.pk, "name": run.name, "url": reverse("training:run_detail", args=[run.pk])}


def study_ref(study: Study) -> dict[str, Any]:
    return {"id": study.pk, "name": study.name, "url": reverse("evaluation:study_detail", args=[study.pk])}


def export_ref(export: ExportJob) -> dict[str, Any]:
    return {
        "id": export.pk,
        "format": export.format,
        "version": export.version,
        "sha256": export.sha256,
        "rows": export.rows,
        "path": export.path,
    }


def policy_ref(policy: Policy, run: Run | None) -> dict[str, Any]:
    return {
        "id": policy.pk,
        "label": policy.label,
        "kind": policy.kind,
        "run": run_ref(run) if run else None,
        "step": policy.step,
        "model_path": policy.model_path if run is not None or policy.kind == "model" else "",
    }


def _checkpoints(items: list[selectors.CheckpointLineage]) -> list[dict[str, Any]]:
    return [
        {
            "step": c.step,
            "path": c.checkpoint.path if c.checkpoint else None,
            "policy_id": c.policy.pk if c.policy else None,
            "judged_in": [study_ref(s) for s in c.studies],
        }
        for c in items
    ]


def run_lineage_body(lineage: selectors.RunLineage) -> dict[str, Any]:
    return {
        "run": run_ref(lineage.run),
        "trained_on": [
            {"field": field, "export": export_ref(export), "study": study_ref(study) if study else None}
            for field, export, study in lineage.inputs
        ],
        "parent": run_ref(lineage.parent) if lineage.parent else None,
        "checkpoints": _checkpoints(lineage.checkpoints),
        "derived_runs": [{**run_ref(r), "from_step": step} for r, step in lineage.derived],
        "sample_jobs": [
            {"id": j.pk, "status": j.status, "study": study_ref(j.study) if j.study else None}
            for j in lineage.sample_jobs
        ],
    }


def study_lineage_body(lineage: selectors.StudyLineage) -> dict[str, Any]:
    job = lineage.made_by
    return {
        "study": study_ref(lineage.study),
        "sampled_by": {"id": job.pk, "url": job.get_absolute_url()} if job else None,
        "policies": [policy_ref(p, run) for p, run in lineage.policies],
        "exports": [
            {
                **export_ref(e.export),
                "runs": [{**run_ref(d.run), "checkpoints": _checkpoints(d.checkpoints)} for d in e.runs],
            }
            for e in lineage.exports
        ],
    }


@require_GET
def run_lineage(request: HttpRequest, run_id: int) -> JsonResponse:
    user = _reader(request)
    if user is None:
        return _error(401, "log in or send an API key (Authorization: Bearer arb_u_…)")
    try:
        run = get_run_for(user=user, run_id=run_id)
    except Http404:
        return _error(404, "no such run")
    return JsonResponse(run_lineage_body(selectors.run_lineage(user=user, run=run)))


@require_GET
def study_lineage(request: HttpRequest, study_id: int) -> JsonResponse:
    user = _reader(request)
    if user is None:
        return _error(401, "log in or send an API key (Authorization: Bearer arb_u_…)")
    if not user.is_researcher:
        return _error(404, "no such study")
    try:
        study = get_study_for(user=user, study_id=study_id)
    except Http404:
        return _error(404, "no such study")
    return JsonResponse(study_lineage_body(selectors.study_lineage(user=user, study=study)))


@require_GET
def leaderboard(request: HttpRequest) -> JsonResponse:
    """`?run=<id>` narrows to one run's checkpoints, ordered by step."""
    user = _reader(request)
    if user is None:
        return _error(401, "log in or send an API key (Authorization: Bearer arb_u_…)")
    if not user.is_researcher:
        return _error(403, "only researchers read the leaderboard")
    run = None
    if raw := request.GET.get("run", ""):
        if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
            return _error(400, "run must be a run id", "run")
        try:
            run = get_run_for(user=user, run_id=int(raw))
        except Http404:
            return _error(404, "no such run", "run")
    standings = selectors.leaderboard(user=user, run=run)
    return JsonResponse(
        {
            "method": "Bradley-Terry (MLE, pseudo-count 0.5), Elo scale, 95% percentile bootstrap over battles",
            "standings": [
                {
                    "policy": policy_ref(s.policy, s.run),
                    "rating": round(s.rating, 2),
                    "low": round(s.low, 2),
                    "high": round(s.high, 2),
                    "wins": s.wins,
                    "losses": s.losses,
                    "ties": s.ties,
                    "studies": s.studies,
                }
                for s in standings
            ],
        }
    )
