"""Researcher pages: studies, items, live progress, quality, results and exports.

Every view is researcher_required and fetches its study through
selectors.get_study_for, which 404s for studies the user neither owns nor shares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from arbiter.accounts.decorators import researcher_required
from arbiter.dependants import HasDependants
from arbiter.streaming import file_download
from artifacts import services as artifact_services
from evaluation import display, examples, export, selectors, services
from evaluation import results as results_module
from evaluation.forms import ExportForm, ItemEditForm, ItemForm, StudyForm, StudyLabelsForm, UploadForm
from evaluation.importers import RowInvalid, parse_all
from evaluation.models import ExportFormat, ExportJob, ExportStatus, ImportJob, Judgment, Study, StudyKind
from evaluation.rendering import render_markdown
from evaluation.services import study_records


def _study(request: HttpRequest, study_id: int, *, edit: bool = False) -> Study:
    study = selectors.get_study_for(user=request.user, study_id=study_id)  # type: ignore[arg-type]
    if edit and not selectors.can_edit_study(user=request.user, study=study):  # type: ignore[arg-type]
        raise PermissionDenied("Only the study's owner may change it.")
    return study


@researcher_required
def study_list(request: HttpRequest) -> HttpResponse:
    archived = request.GET.get("archived") == "1"
    tag = request.GET.get("tag", "").strip()
    studies = selectors.study_list_for(user=request.user, archived=archived, tag=tag)  # type: ignore[arg-type]
    return render(request, "evaluation/study_list.html", {"studies": studies, "archived": archived, "tag": tag})


@researcher_required
@require_POST
def study_labels(request: HttpRequest, study_id: int) -> HttpResponse:
    """Rename and re-tag from the study page (owner or admin; readers it is shared with get 403, others 404)."""
    study = _study(request, study_id, edit=True)
    form = StudyLabelsForm(request.POST, study=study)
    if form.is_valid():
        try:
            study_records.edit_study_labels(study=study, name=form.cleaned_data["name"], tags=form.tag_list())
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            return redirect("evaluation:study_detail", study_id=study.pk)
    study.refresh_from_db()
    context = {**_detail_context(request, study), "labels_form": form}
    return render(request, "evaluation/study_detail.html", context, status=422)


@researcher_required
@require_POST
def study_archive(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id, edit=True)
    study_records.set_study_archived(study=study, archived=request.POST.get("archived", "1") == "1")
    return redirect("evaluation:study_detail", study_id=study.pk)


@researcher_required
def study_delete(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: what deleting removes, or what stops it; POST: delete. A refusal is a 409 that lists dependants."""
    study = _study(request, study_id, edit=True)
    found = study_records.dependants_of_study(study=study, user=request.user)  # type: ignore[arg-type]
    if request.method == "POST" and not found:
        try:
            study_records.delete_study(study=study, by=request.user)  # type: ignore[arg-type]
        except HasDependants as exc:
            found = exc.dependants
        else:
            return redirect("evaluation:study_list")
    counts = {"items": study.items.count(), "judgments": Judgment.objects.filter(study=study).count()}
    context = {"study": study, "dependants": found, "counts": counts}
    return render(request, "evaluation/study_delete.html", context, status=409 if request.method == "POST" else 200)


@researcher_required
def study_create(request: HttpRequest) -> HttpResponse:
    form = StudyForm(request.POST or None, owner=request.user)  # type: ignore[arg-type]
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        study = services.create_study(
            owner=request.user,  # type: ignore[arg-type]
            name=d["name"],
            kind=d["kind"],
            instructions=d["instructions"],
            overlap=d["overlap"],
            lease_seconds=d["lease_seconds"],
            accuracy_threshold=d["accuracy_threshold"],
            scale_labels=d["scale_text"],
            annotators=list(d["annotators"]),
            shared_with=list(d["shared_with"]),
            text_format=d["text_format"],
        )
        return redirect("evaluation:items_upload", study_id=study.pk)
    status = 422 if request.method == "POST" else 200
    return render(request, "evaluation/study_form.html", {"form": form, "study": None}, status=status)


@researcher_required
def study_edit(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id, edit=True)
    initial = {"annotators": study.annotators.all(), "shared_with": study.shared_with.all()}
    form = StudyForm(request.POST or None, instance=study, initial=initial, owner=study.owner)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            services.update_study(
                study=study,
                name=d["name"],
                instructions=d["instructions"],
                overlap=d["overlap"],
                lease_seconds=d["lease_seconds"],
                accuracy_threshold=d["accuracy_threshold"],
                scale_labels=d["scale_text"],
                annotators=list(d["annotators"]),
                shared_with=list(d["shared_with"]),
                text_format=d["text_format"],
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect("evaluation:study_detail", study_id=study.pk)
    status = 422 if request.method == "POST" else 200
    return render(request, "evaluation/study_form.html", {"form": form, "study": study}, status=status)


@researcher_required
def study_detail(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id)
    return render(request, "evaluation/study_detail.html", _detail_context(request, study))


def _detail_context(request: HttpRequest, study: Study) -> dict[str, Any]:
    flagged = list(selectors.flagged_assignments(study=study)[:50])
    for assignment in flagged:
        assignment.summary = display.item_summary(item=assignment.item)  # type: ignore[attr-defined]
    return {
        "study": study,
        "progress": selectors.study_progress(study_id=study.pk),
        "annotators": study.annotators.order_by("username"),
        "flagged": flagged,
        "can_edit": selectors.can_edit_study(user=request.user, study=study),  # type: ignore[arg-type]
        "tags": [t.name for t in study.tags.all()],
        "labels_form": StudyLabelsForm(study=study),
    }


FORMAT_HELP = {
    StudyKind.PAIRWISE: '{"prompt": "...", "chosen": "...", "rejected": "..."}  ·  {"chosen": "<whole transcript>", '
    '"rejected": "<whole transcript>"}  ·  {"prompt": "...", "response_a": "...", "response_b": "...", '
    '"model_a": "...", "model_b": "..."}',
    StudyKind.RUBRIC: '{"goal": "...", "plans": ["...", "..."], "rubric": ["...", "..."]}',
    StudyKind.VIOLATION: '{"task_id": 47, "intent": "...", "policies": [{"policy_category": "user_consent", '
    '"policy_template_id": "ask_the_user", "description": "..."}], "trajectory": [{"action": "...", '
    '"observation": "..."}], "agent": "..."}',
    StudyKind.RATING: '{"prompt": "...", "response": "...", "model": "..."}',
}


@researcher_required
def items_upload(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id, edit=True)
    form = UploadForm(request.POST or None, request.FILES or None)
    context: dict[str, Any] = {
        "study": study,
        "form": form,
        "format_help": FORMAT_HELP[StudyKind(study.kind)],
        "format_note": examples.NOTES[study.kind],
    }
    status = 422 if request.method == "POST" else 200
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            outcome = services.submit_import(
                study=study,
                data=upload,
                filename=upload.name or "",
                import_valid_rows=form.cleaned_data["import_valid_rows"],
                flag_unsplittable=form.cleaned_data["flag_unsplittable"],
                requested_by=request.user,  # type: ignore[arg-type]
            )
        except services.ImportRejected as exc:
            context.update(
                errors=exc.errors, error_count=exc.error_count, valid_count=exc.valid_count, message=exc.message
            )
        else:
            if isinstance(outcome, ImportJob):
                return redirect(reverse("evaluation:items_upload", args=[study.pk]) + f"?job={outcome.pk}")
            context.update(report=outcome)
            status = 200
    context["imports"] = selectors.recent_imports(study=study)
    return render(request, "evaluation/study_upload.html", context, status=status)


@researcher_required
def import_status(request: HttpRequest, study_id: int, import_id: int) -> HttpResponse:
    study = _study(request, study_id)
    job = selectors.import_for(study=study, import_id=import_id)
    return render(request, "evaluation/study_upload.html#import_row", {"study": study, "job": job})


ITEMS_PER_PAGE = 25


@researcher_required
def item_list(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id)
    query = request.GET.get("q", "").strip()[:200]
    status = request.GET.get("status", "all")
    if status not in selectors.ITEM_STATUSES:
        status = "all"
    paginator = Paginator(selectors.item_list(study=study, query=query, status=status), ITEMS_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    rows = [(item, display.item_summary(item=item)) for item in page.object_list]
    context = {
        "study": study,
        "page": page,
        "rows": rows,
        "query": query,
        "status": status,
        "statuses": selectors.ITEM_STATUSES,
        "can_edit": selectors.can_edit_study(user=request.user, study=study),  # type: ignore[arg-type]
        "paging": urlencode({k: v for k, v in (("q", query), ("status", status)) if v and v != "all"}),
    }
    return render(request, "evaluation/item_list.html", context)


@researcher_required
def item_detail(request: HttpRequest, study_id: int, item_id: int) -> HttpResponse:
    """The item exactly as an annotator sees it (sides in the file's order), with what only researchers see."""
    study = _study(request, study_id)
    item = selectors.get_item_for(study=study, item_id=item_id)
    context = {
        "study": study,
        "item_row": item,
        "item": display.item_view(study=study, item=item),
        "preview": True,
        "errors": {},
        "instructions": mark_safe(render_markdown(study.instructions)) if study.instructions else "",  # noqa: S308
        "scale": list(enumerate(study.scale, start=1)) if study.kind == StudyKind.RATING else (),
        "flags": item.payload.get("flags") or [],
        "automatic": item.automatic_judgments.order_by("judge"),
        "can_edit": selectors.can_edit_study(user=request.user, study=study)  # type: ignore[arg-type]
        and not item.judgment_count
        and not item.claimed,
    }
    return render(request, "evaluation/item_detail.html", context)


@researcher_required
def item_edit(request: HttpRequest, study_id: int, item_id: int) -> HttpResponse:
    study = _study(request, study_id, edit=True)
    item = selectors.get_item_for(study=study, item_id=item_id)
    form = ItemEditForm(request.POST or None, initial={"row": ItemEditForm.row_of(item)})
    if request.method == "POST" and form.is_valid():
        result = parse_all(json.dumps(form.cleaned_data["row"]).encode(), kind=study.kind)
        try:
            if not result.ok:
                error = result.errors[0]
                raise ValidationError(f"{error.field or 'item'}: {error.message}")
            if len(result.items) != 1:
                raise ValidationError("An edit is one item (a trajectory for a waiting task is uploaded instead).")
            services.edit_item(study=study, item_id=item.pk, parsed=result.items[0])
        except ValidationError as exc:
            form.add_error("row", exc)
        except services.ItemLocked as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("evaluation:item_detail", study_id=study.pk, item_id=item.pk)
    status = 422 if request.method == "POST" else 200
    context = {"study": study, "item_row": item, "form": form, "locked": bool(item.judgment_count or item.claimed)}
    return render(request, "evaluation/item_edit.html", context, status=status)


@researcher_required
@require_POST
def item_delete(request: HttpRequest, study_id: int, item_id: int) -> HttpResponse:
    study = _study(request, study_id, edit=True)
    item = selectors.get_item_for(study=study, item_id=item_id)
    try:
        services.delete_item(study=study, item_id=item.pk)
    except services.ItemLocked as exc:
        return render(request, "evaluation/item_locked.html", {"study": study, "message": str(exc)}, status=409)
    return redirect("evaluation:item_list", study_id=study.pk)


@researcher_required
def items_example(request: HttpRequest, study_id: int) -> HttpResponse:
    """An example upload for this study's kind, gold rows included."""
    study = _study(request, study_id)
    response = HttpResponse(examples.example_file(study.kind), content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="example-{study.kind}.jsonl"'
    return response


@researcher_required
def item_create(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id, edit=True)
    form = ItemForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            row = form.row(study.kind)
            result = parse_all(json.dumps(row).encode(), kind=study.kind)
            if not result.ok:
                error = result.errors[0]
                raise ValidationError(f"{error.field or 'item'}: {error.message}")
            services.add_items(study=study, items=result.items)
        except (ValidationError, RowInvalid) as exc:
            form.add_error(None, exc if isinstance(exc, ValidationError) else str(exc))
        else:
            return redirect("evaluation:item_list", study_id=study.pk)
    status = 422 if request.method == "POST" else 200
    return render(request, "evaluation/item_form.html", {"study": study, "form": form}, status=status)


@researcher_required
def quality(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id)
    return render(
        request, "evaluation/study_quality.html", {"study": study, "quality": selectors.study_quality(study=study)}
    )


@researcher_required
def results(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id)
    # One computation for the page and the studies API (evaluation.results.study_results).
    data = results_module.study_results(study=study)
    context: dict[str, Any] = {"study": study, "charts": data.charts}
    if data.kind == StudyKind.PAIRWISE:
        context.update(win_rates=data.win_rates, ratings=data.ratings)
    elif data.kind == StudyKind.RUBRIC:
        context["rubric"] = data.rubric
    elif data.kind == StudyKind.VIOLATION and data.violation is not None:
        context.update(
            summaries=data.violation.people,
            automatic=data.violation.automatic,
            comparisons=data.violation.comparisons,
        )
    else:
        context.update(ratings=data.rating_rows, scale=data.scale)
    return render(request, "evaluation/study_results.html", context)


# The recipe "Train on this" opens for each study kind's reward export (the launch form offers the others too:
# pairwise also trains reward_model; rubric scores also train reward_regression).
TRAIN_RECIPES = {
    StudyKind.PAIRWISE: "dpo",
    StudyKind.RATING: "reward_regression",
    StudyKind.RUBRIC: "rubric_judge",
    StudyKind.VIOLATION: "process_reward_model",
}


def _train_link(job: ExportJob) -> str | None:
    """A prefilled launch form for a reward export; None when the training app has no such page."""
    recipe = TRAIN_RECIPES.get(StudyKind(job.study.kind))
    if job.format != ExportFormat.REWARD or job.status != ExportStatus.DONE or recipe is None:
        return None
    try:
        base = reverse("training:run_new")
    except NoReverseMatch:
        return None
    return base + "?" + urlencode({"recipe": recipe, "dataset": job.path})


@researcher_required
def export_page(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _study(request, study_id)
    form = ExportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        export.start_export(
            study=study,
            requested_by=request.user,  # type: ignore[arg-type]
            format=form.cleaned_data["format"],
            keep_ties=form.cleaned_data["keep_ties"],
            style=form.cleaned_data["style"],
        )
        return redirect("evaluation:export", study_id=study.pk)
    jobs = [(job, _train_link(job)) for job in study.exports.select_related("study")[:20]]
    status = 422 if request.method == "POST" else 200
    return render(request, "evaluation/study_export.html", {"study": study, "form": form, "jobs": jobs}, status=status)


@researcher_required
def export_delete(request: HttpRequest, study_id: int, export_id: int) -> HttpResponse:
    """POST: delete an export; a refusal (a run trained on it) re-renders the page with the reason (409)."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    study = _study(request, study_id, edit=True)
    job = selectors.export_for(study=study, export_id=export_id)
    try:
        export.delete_export(job=job)
    except ValidationError as exc:
        jobs = [(j, _train_link(j)) for j in study.exports.select_related("study")[:20]]
        context = {"study": study, "form": ExportForm(), "jobs": jobs, "delete_error": " ".join(exc.messages)}
        return render(request, "evaluation/study_export.html", context, status=409)
    return redirect("evaluation:export", study_id=study.pk)


@researcher_required
def export_status(request: HttpRequest, study_id: int, export_id: int) -> HttpResponse:
    study = _study(request, study_id)
    job = selectors.export_for(study=study, export_id=export_id)
    return render(
        request, "evaluation/study_export.html#job_row", {"study": study, "job": job, "train": _train_link(job)}
    )


@researcher_required
def export_download(request: HttpRequest, study_id: int, export_id: int) -> FileResponse | HttpResponseRedirect:
    study = _study(request, study_id)
    job = selectors.export_for(study=study, export_id=export_id)
    if job.status == ExportStatus.DONE and job.path.startswith("s3://"):
        # The bucket serves the bytes (a short-lived signed URL), not this web process.
        return HttpResponseRedirect(artifact_services.download_url(job.path, filename=job.path.rsplit("/", 1)[-1]))
    path = Path(job.path)
    root = Path(settings.ARTIFACT_ROOT).resolve()
    if job.status != ExportStatus.DONE or not path.is_file() or root not in path.resolve().parents:
        raise Http404("This export has no file.")
    # researcher_required is typed for views returning HttpResponse; a FileResponse streams instead.
    return file_download(path, filename=path.name)
