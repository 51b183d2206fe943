"""Annotator pages: the queue of studies, the next item's form, submit and skip.

Annotators see only their own assignments: every lookup (selectors.annotation_state,
selectors.own_assignment, get_annotation_study_for) checks that the requester annotates
the study and filters assignments by the requester. Model identities never reach these
templates (see evaluation.display). This is the hot path of the annotator loop: two queries per
page besides the session's user (see selectors.annotation_state), item text pre-rendered; a submit answers with
the next item's page, one request a judgment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from arbiter.accounts.decorators import annotator_required
from evaluation import display, selectors, services
from evaluation.forms import JudgmentForm, SkipForm
from evaluation.models import Assignment, Item, Study, StudyKind
from evaluation.rendering import render_markdown


@annotator_required
def queue(request: HttpRequest) -> HttpResponse:
    rows = selectors.annotator_queue(user=request.user)  # type: ignore[arg-type]
    return render(request, "evaluation/annotate_queue.html", {"rows": rows})


# Study instructions are shown above every item; parse each text once per process, not per page.
_instructions_html = lru_cache(maxsize=64)(render_markdown)


def _render_item(
    request: HttpRequest,
    study: Study,
    assignment: Assignment,
    progress: selectors.AnnotatorProgress,
    form: JudgmentForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "study": study,
        "instructions": mark_safe(_instructions_html(study.instructions)) if study.instructions else "",  # noqa: S308
        "assignment_id": assignment.pk,
        "item": display.item_view(study=study, item=assignment.item, swapped=assignment.swapped),
        "form": form,
        "errors": form.errors if form is not None else {},  # shown next to their fields
        "progress": progress,
        "position": progress.done + 1,
        "percent": round(100 * progress.done / progress.total) if progress.total else 0,
        "scale": list(enumerate(study.scale, start=1)) if study.kind == StudyKind.RATING else (),
        "page_url": reverse("annotate:next", kwargs={"study_id": study.pk}),
    }
    return render(request, "evaluation/annotate_item.html", context, status=status)


@annotator_required
def next_item(request: HttpRequest, study_id: int) -> HttpResponse:
    return _next_page(request, study_id, after_post=False)


def _next_page(request: HttpRequest, study_id: int, *, after_post: bool) -> HttpResponse:
    """The next item's form (leased now, or the one already open). After a submit or skip it is the POST's own
    answer: one round trip a judgment, not a redirect and a second request (annotate.js then sets the
    address bar to the page's own URL, so a reload or Back asks for the page, never re-sends the form).
    The end of the queue after a POST is still a redirect, so the address bar says where the done page is."""
    # One query for the study, the membership check, progress and the open assignment; one to lease.
    state = selectors.annotation_state(user=request.user, study_id=study_id)  # type: ignore[arg-type]
    study = state.study
    assignment = services.next_assignment(annotator=request.user, study=study, latest=state.latest)  # type: ignore[arg-type]
    if assignment is None:
        if after_post:
            return redirect("annotate:next", study_id=study_id)
        progress = selectors.annotator_progress(study=study, annotator=request.user)  # type: ignore[arg-type]
        return render(request, "evaluation/annotate_done.html", {"study": study, "progress": progress})
    return _render_item(request, study, assignment, state.progress)


def _own_assignment(request: HttpRequest, study_id: int, raw_id: Any) -> Assignment | None:
    """The requester's assignment in a study they are (still) assigned to: one query for both checks."""
    try:
        assignment_id = int(raw_id)
    except (TypeError, ValueError):
        return None
    return selectors.own_assignment(user=request.user, study_id=study_id, assignment_id=assignment_id)  # type: ignore[arg-type]


def _rerender(request: HttpRequest, assignment: Assignment, form: JudgmentForm) -> HttpResponse:
    """The same item again with the form's errors (422); the rare path, so it reloads what it shows."""
    study = Study.objects.get(pk=assignment.study_id)
    assignment.item = Item.objects.get(pk=assignment.item_id)
    progress = selectors.annotator_progress(study=study, annotator=request.user)  # type: ignore[arg-type]
    return _render_item(request, study, assignment, progress, form, status=422)


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
        return _rerender(request, assignment, form)
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
        return _rerender(request, assignment, form)
    except services.LeaseExpired:
        return render(request, "evaluation/annotate_expired.html", {"study": study}, status=409)
    except services.AssignmentClosed:
        pass  # skipped already; move on
    return _next_page(request, study.pk, after_post=True)


@annotator_required
@require_POST
def skip(request: HttpRequest, study_id: int) -> HttpResponse:
    form = SkipForm(request.POST)
    assignment = _own_assignment(request, study_id, request.POST.get("assignment"))
    if assignment is None or not form.is_valid():
        selectors.get_annotation_study_for(user=request.user, study_id=study_id)  # type: ignore[arg-type]  # 404s
        return HttpResponseBadRequest("No such assignment of yours in this study.")
    services.skip_assignment(
        annotator=request.user,  # type: ignore[arg-type]
        assignment_id=assignment.pk,
        flagged=form.cleaned_data["flag"],
        flag_reason=form.cleaned_data["reason"],
    )
    return _next_page(request, study_id, after_post=True)
