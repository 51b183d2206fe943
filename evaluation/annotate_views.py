"""Annotator pages: the queue of studies, the next item's form, submit and skip.

Annotators see only their own assignments: every lookup goes through
get_annotation_study_for and filters assignments by the requesting user.
Model identities never reach these templates (see `_blinded`).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from arbiter.accounts.decorators import annotator_required
from evaluation import selectors, services
from evaluation.forms import JudgmentForm, SkipForm
from evaluation.models import Assignment, Study, StudyKind
from evaluation.stats import DIMENSION_LABELS


@annotator_required
def queue(request: HttpRequest) -> HttpResponse:
    rows = selectors.annotator_queue(user=request.user)  # type: ignore[arg-type]
    return render(request, "evaluation/annotate_queue.html", {"rows": rows})


def _blinded(study: Study, assignment: Assignment) -> dict[str, Any]:
    """What the annotator may see of an item: no model names, sides in this assignment's order."""
    payload = assignment.item.payload
    if study.kind == StudyKind.PAIRWISE:
        left, right = payload["response_a"], payload["response_b"]
        if assignment.swapped:
            left, right = right, left
        return {"prompt": payload["prompt"], "left": left, "right": right}
    if study.kind == StudyKind.RUBRIC:
        plans = [p["text"] for p in payload["plans"]]
        if assignment.swapped:
            plans.reverse()
        return {"goal": payload["goal"], "plans": list(enumerate(plans)), "rubric": list(enumerate(payload["rubric"]))}
    if study.kind == StudyKind.VIOLATION:
        policies = [
            {**p, "index": i, "dimension": DIMENSION_LABELS.get(p["policy_category"], p["policy_category"])}
            for i, p in enumerate(payload["policies"])
        ]
        steps = [{"index": s, **step} for s, step in enumerate(payload["trajectory"])]
        return {"intent": payload["intent"], "policies": policies, "steps": steps}
    return {"prompt": payload["prompt"], "response": payload["response"]}


def _render_item(
    request: HttpRequest, study: Study, assignment: Assignment, form: JudgmentForm | None = None, status: int = 200
) -> HttpResponse:
    progress = selectors.annotator_progress(study=study, annotator=request.user)  # type: ignore[arg-type]
    context = {
        "study": study,
        "assignment": assignment,
        "item": _blinded(study, assignment),
        "form": form,
        "progress": progress,
        "position": progress.done + 1,
        "scale": list(enumerate(study.scale, start=1)),
    }
    return render(request, "evaluation/annotate_item.html", context, status=status)


@annotator_required
def next_item(request: HttpRequest, study_id: int) -> HttpResponse:
    study = selectors.get_annotation_study_for(user=request.user, study_id=study_id)  # type: ignore[arg-type]
    assignment = services.next_assignment(annotator=request.user, study=study)  # type: ignore[arg-type]
    if assignment is None:
        progress = selectors.annotator_progress(study=study, annotator=request.user)  # type: ignore[arg-type]
        return render(request, "evaluation/annotate_done.html", {"study": study, "progress": progress})
    return _render_item(request, study, assignment)


def _own_assignment(request: HttpRequest, study_id: int, raw_id: Any) -> Assignment | None:
    """The requester's assignment in a study they are (still) assigned to: one query for both checks."""
    try:
        assignment_id = int(raw_id)
    except (TypeError, ValueError):
        return None
    user = request.user
    qs = Assignment.objects.filter(pk=assignment_id, study_id=study_id, annotator=user).select_related("item", "study")
    if not user.is_admin_role:  # type: ignore[union-attr]
        qs = qs.filter(study__annotators=user)
    return qs.first()


@annotator_required
@require_POST
def submit(request: HttpRequest, study_id: int) -> HttpResponse:
    assignment = _own_assignment(request, study_id, request.POST.get("assignment"))
    if assignment is None:
        selectors.get_annotation_study_for(user=request.user, study_id=study_id)  # type: ignore[arg-type]  # 404s
        return HttpResponseBadRequest("No such assignment of yours in this study.")
    study = assignment.study
    form = JudgmentForm(request.POST, study=study, item_payload=assignment.item.payload)
    if not form.is_valid():
        return _render_item(request, study, assignment, form, status=422)
    try:
        services.submit_judgment(
            annotator=request.user,  # type: ignore[arg-type]
            assignment=assignment,
            data=form.judgment_data(),
            time_ms=form.cleaned_data.get("time_ms"),
        )
    except ValidationError as exc:
        for message in exc.messages:
            form.add_error(None, message)
        return _render_item(request, study, assignment, form, status=422)
    except services.LeaseExpired:
        return render(request, "evaluation/annotate_expired.html", {"study": study}, status=409)
    except services.AssignmentClosed:
        pass  # skipped already; move on
    return redirect("annotate:next", study_id=study.pk)


@annotator_required
@require_POST
def skip(request: HttpRequest, study_id: int) -> HttpResponse:
    study = selectors.get_annotation_study_for(user=request.user, study_id=study_id)  # type: ignore[arg-type]
    form = SkipForm(request.POST)
    assignment = _own_assignment(request, study.pk, request.POST.get("assignment"))
    if assignment is None or not form.is_valid():
        return HttpResponseBadRequest("No such assignment of yours in this study.")
    services.skip_assignment(
        annotator=request.user,  # type: ignore[arg-type]
        assignment_id=assignment.pk,
        flagged=form.cleaned_data["flag"],
        flag_reason=form.cleaned_data["reason"],
    )
    return redirect("annotate:next", study_id=study.pk)
