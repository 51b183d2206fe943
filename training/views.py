"""Pages of the training app (researchers only): run list, launch, run page (live), compare, API keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from arbiter.accounts.decorators import researcher_required
from arbiter.dependants import HasDependants
from arbiter.ids import parse_ids
from artifacts.access import is_hub_id, may_read
from training import selectors
from training.forms import ApiKeyForm, LaunchForm, RunEditForm, config_sections, diff_sections
from training.http import AuthedHttpRequest
from training.models import ApiToken, Run, RunStatus
from training.services import panels, run_records, runs
from training.services.datasets import DataSizing, size_from_data


def _recipes() -> dict[str, Any]:
    from training.engine.config import RECIPES  # import-cheap registry, no torch

    return RECIPES


def duration_label(seconds: float | None) -> str:
    """A run's duration as a researcher reads it: "45 s", "12 min 3 s", "3 h 07 min", "2 d 4 h"."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _metric_value(value: float | None) -> str | None:
    # Four significant digits: a loss of 0.3127 and a learning rate of 1e-06 both stay readable.
    return None if value is None else f"{value:.4g}"


# Final-value columns the run list shows when the user has not picked any (those the runs have).
DEFAULT_METRIC_COLUMNS = ("loss", "reward", "eval/loss", "eval/accuracy", "accuracy")
MAX_METRIC_COLUMNS = 4


@dataclass(frozen=True)
class RunRow:
    """One line of the run table: the run plus what the list computes for it (duration, final metric values)."""

    run: Run
    duration_label: str
    final_cells: list[str | None]


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    """htmx follows HX-Redirect with a full page load; plain forms get a 302."""
    if getattr(request, "htmx", False):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


@researcher_required
@vary_on_headers("HX-Request")
def run_list(request: AuthedHttpRequest) -> HttpResponse:
    filters = selectors.RunListFilters(
        status=request.GET.get("status", ""),
        recipe=request.GET.get("recipe", ""),
        tag=request.GET.get("tag", ""),
        q=request.GET.get("q", "").strip(),
        sort=request.GET.get("sort", "-created"),
        archived=request.GET.get("archived") == "1",
    )
    qs = selectors.run_list(user=request.user, filters=filters)
    page = list(qs[:200])
    # Choices come from the runs on this page, the names most of them share first, and are bounded
    # (MAX_KEY_CHOICES) whatever anyone logged: the page's size does not grow with others' metrics.
    metric_keys = selectors.summary_keys(runs=page, limit=selectors.MAX_KEY_CHOICES)
    sort_metric = filters.sort.lstrip("-").removeprefix("metric:") if "metric:" in filters.sort else ""
    # `cols` ticked in the Columns menu; `cols_set` says the menu was submitted (so "none ticked" sticks).
    wanted = request.GET.getlist("cols")[:MAX_METRIC_COLUMNS] if request.GET.get("cols_set") else []
    present = selectors.existing_keys(runs=page, names=[*wanted, *DEFAULT_METRIC_COLUMNS, sort_metric])
    if request.GET.get("cols_set"):
        columns = [k for k in wanted if k in present]
    else:
        columns = [k for k in DEFAULT_METRIC_COLUMNS if k in present][:2]
    if sort_metric and sort_metric not in columns:
        columns.append(sort_metric)
    # A chosen column or sort key outside the offered choices is still listed, ticked/selected.
    metric_keys = sorted({*metric_keys, *columns})
    finals = selectors.final_values(run_ids=[r.id for r in page], keys=columns) if columns and page else {}
    rows = [
        RunRow(
            run=run,
            duration_label=duration_label(run.duration_s),
            final_cells=[_metric_value(finals.get((run.id, k))) for k in columns],
        )
        for run in page
    ]
    filtered = any((filters.status, filters.recipe, filters.tag, filters.q, filters.archived))
    context = {
        "runs": page,
        "rows": rows,
        "filters": filters,
        "statuses": RunStatus.choices,
        "recipes": sorted(_recipes()),
        "metric_keys": metric_keys,
        "sort_metric": sort_metric,
        "columns": columns,
        "filtered": filtered,
    }
    template = "training/run_list.html#run-table" if getattr(request, "htmx", False) else "training/run_list.html"
    return render(request, template, context)


@researcher_required
def run_new(request: AuthedHttpRequest) -> HttpResponse:
    """Pick a recipe, fill its generated form, launch. `?dataset=&recipe=` prefill from a study export."""
    recipes = _recipes()
    recipe = request.POST.get("recipe") or request.GET.get("recipe") or ""
    if recipe not in recipes:
        return render(request, "training/run_new.html", {"recipes": recipes.values(), "form": None})
    initial: dict[str, Any] = {}
    sizing = None
    if dataset := request.GET.get("dataset"):
        initial["cfg_dataset_path"] = dataset
        sizing = _sized_from_data(request, recipe=recipe, dataset=dataset, initial=initial)
    form = LaunchForm(request.POST or None, recipe=recipe, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                run = runs.launch_run(
                    owner=request.user,
                    recipe=recipe,
                    config=form.config(),
                    name=form.cleaned_data["name"],
                    queue=form.cleaned_data["queue"],
                    tags=form.tag_list(),
                    shared=form.cleaned_data["shared"],
                    gpus=form.gpu_count(),
                )
            except ValidationError as exc:
                if hasattr(exc, "error_dict"):
                    form.add_config_errors({k: [m for e in v for m in e.messages] for k, v in exc.error_dict.items()})
                else:
                    form.add_error(None, exc)
            else:
                return _redirect(request, run.get_absolute_url())
        status = 422
    return render(
        request,
        "training/run_new.html",
        {"recipes": recipes.values(), "recipe": recipes[recipe], "form": form, "sizing": sizing},
        status=status,
    )


def _in_artifacts(path: str) -> bool:
    root = Path(settings.ARTIFACT_ROOT).resolve()
    return root in Path(path).resolve().parents


def _may_read(request: AuthedHttpRequest, value: str, model: bool) -> bool:
    return Path(value).is_absolute() and may_read(user=request.user, value=value, model=model)


def _sized_from_data(
    request: AuthedHttpRequest, *, recipe: str, dataset: str, initial: dict[str, Any]
) -> DataSizing | None:
    """ "Train on this": the model to train (``?model=``, else the recipe's default) and truncation limits sized
    from the exported rows' token lengths for that model's tokenizer, put in the form's initial values."""
    if request.method != "GET":
        return None
    model = request.GET.get("model", "").strip()[:500] or str(
        runs.recipe_config_cls(recipe).model_fields["model_name_or_path"].default
    )
    initial["cfg_model_name_or_path"] = model
    # Only files in the artifact store (a study's exports, checkpoints) that this user may read (the launch check's
    # rule) are read for a page view, and models by hub id; anything else, another researcher's export included,
    # gets one note whether or not it exists. Other paths are checked when the run is launched.
    readable_model = model == "tiny" or is_hub_id(model) or (_in_artifacts(model) and _may_read(request, model, True))
    if not (_in_artifacts(dataset) and _may_read(request, dataset, False) and readable_model):
        return DataSizing(model, dataset, None, "limits are sized only for data and models in the artifact store")
    sizing = size_from_data(recipe=recipe, dataset=dataset, model=model)
    if sizing is not None and sizing.profile is not None:
        initial.update({f"cfg_{k}": v for k, v in sizing.profile.limits().items()})
    return sizing


def _panel_context(request: AuthedHttpRequest, run: Run) -> dict[str, Any]:
    can_change = selectors.can_change_run(user=request.user, run=run)
    checkpoint = selectors.last_checkpoint(run=run)
    offers_resume = can_change and not run.is_active and not run.is_external
    return {
        "run": run,
        "duration": duration_label(run.duration_s),
        "can_change": can_change,
        "checkpoint": checkpoint,
        # What Resume would continue from: this run's newest checkpoint, else one of the run it resumed.
        "resume_point": (checkpoint or runs.resume_point(run)) if offers_resume else None,
        "transitions": list(run.transitions.all()),
        "progress": (progress := selectors.run_progress(run=run)),
        "eta": duration_label(progress.eta_s) if progress and progress.eta_s is not None else "",
        "error_line": selectors.last_error_line(run=run),
    }


def _detail_context(request: AuthedHttpRequest, run: Run) -> dict[str, Any]:
    context = _panel_context(request, run)
    context.update(
        {
            "tags": [t.name for t in run.tags.all()],
            "parent": selectors.run_parent(user=request.user, run=run),
            "children": selectors.run_children(user=request.user, run=run),
            "config_sections": config_sections(recipe=run.recipe, config=run.config or {}),
            "summaries": selectors.run_summaries(run=run),
            "edit_form": RunEditForm(run=run),
            "pins": panels.pinned_keys(user=request.user),
        }
    )
    return context


@researcher_required
def run_detail(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    run = selectors.get_run_for(user=request.user, run_id=run_id)
    return render(request, "training/run_detail.html", _detail_context(request, run))


@researcher_required
def run_samples(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """The run page's Samples card: a logged table (`?name=`, `?step=`; the latest by default) as plain text."""
    run = selectors.get_run_for(user=request.user, run_id=run_id)
    names = selectors.table_names(run=run)
    name = request.GET.get("name") or ("samples" if "samples" in names or not names else names[0])
    raw_step = request.GET.get("step", "")
    step = int(raw_step) if raw_step.isascii() and raw_step.isdigit() and len(raw_step) < 19 else None
    table = selectors.table_at(run=run, name=name, step=step)
    context = {
        "run": run,
        "names": names,
        "name": name,
        "steps": selectors.table_steps(run=run, name=name),
        "table": table,
        "pinned": step is not None,  # a step the reader picked: stop following the latest
        "sendable": bool(table and {"prompt", "completion"} <= set(table.columns)),
    }
    return render(request, "training/run_samples.html", context)


@researcher_required
def run_checkpoints(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """The run page's Checkpoints card: every checkpoint, newest first, a page at a time (`?page=`)."""
    run = selectors.get_run_for(user=request.user, run_id=run_id)
    raw = request.GET.get("page", "1")
    page = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else 1
    context = {"run": run, "listing": selectors.checkpoint_page(run=run, page=page)}
    return render(request, "training/run_checkpoints.html", context)


@researcher_required
def run_panel(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """Status, duration and actions; polled by htmx while the run is active (works without websockets)."""
    run = selectors.get_run_for(user=request.user, run_id=run_id)
    return render(request, "training/run_detail.html#status-panel", _panel_context(request, run))


def _act(request: AuthedHttpRequest, run_id: int, action: str) -> HttpResponse:
    run = selectors.get_run_for(user=request.user, run_id=run_id, for_change=True)
    try:
        if action == "cancel":
            runs.cancel_run(run=run, by=request.user)
        elif action == "retry":
            return _redirect(request, runs.retry_run(run=run, by=request.user).get_absolute_url())
        elif action == "resume":
            return _redirect(request, runs.resume_run(run=run, by=request.user).get_absolute_url())
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        if getattr(request, "htmx", False):
            context = {**_panel_context(request, run), "action_error": " ".join(exc.messages)}
            return render(request, "training/run_detail.html#status-panel", context, status=422)
    run.refresh_from_db()
    if getattr(request, "htmx", False):
        return render(request, "training/run_detail.html#status-panel", _panel_context(request, run))
    return redirect(run.get_absolute_url())


def _header(
    request: AuthedHttpRequest, run: Run, *, form: RunEditForm | None = None, status: int = 200
) -> HttpResponse:
    context = {
        "run": run,
        "tags": [t.name for t in run.tags.all()],
        "can_change": selectors.can_change_run(user=request.user, run=run),
        "edit_form": form or RunEditForm(run=run),
    }
    return render(request, "training/run_detail.html#run-head", context, status=status)


@researcher_required
@require_POST
def run_edit(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """Rename and re-tag (owner or admin); htmx gets the header back, a plain form the page."""
    run = selectors.get_run_for(user=request.user, run_id=run_id, for_change=True)
    form = RunEditForm(request.POST, run=run)
    if form.is_valid():
        try:
            run_records.edit_run(run=run, name=form.cleaned_data["name"], tags=form.tag_list())
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            if getattr(request, "htmx", False):
                return _header(request, run)
            return redirect(run.get_absolute_url())
    run.refresh_from_db()
    if getattr(request, "htmx", False):
        return _header(request, run, form=form, status=422)
    context = {**_detail_context(request, run), "edit_form": form, "edit_open": True}
    return render(request, "training/run_detail.html", context, status=422)


@researcher_required
@require_POST
def run_archive(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """`archived=1` archives, `archived=0` brings the run back to the list."""
    run = selectors.get_run_for(user=request.user, run_id=run_id, for_change=True)
    try:
        run_records.set_run_archived(run=run, archived=request.POST.get("archived", "1") == "1")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Run #{run.id} {'archived' if run.archived_at else 'is back in the run list'}.")
    return _redirect(request, run.get_absolute_url())


@researcher_required
def run_delete(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """GET: what deleting would remove, or what stops it; POST: delete. A refusal is a 409 that lists dependants."""
    run = selectors.get_run_for(user=request.user, run_id=run_id, for_change=True)
    found = [] if run.is_active else run_records.dependants_of_run(run=run, user=request.user)
    refusal = f"Run #{run.id} is {run.status}: cancel it before deleting it." if run.is_active else ""
    if request.method == "POST" and not refusal and not found:
        try:
            run_records.delete_run(run=run, by=request.user)
        except HasDependants as exc:
            found = exc.dependants
        except ValidationError as exc:
            refusal = " ".join(exc.messages)
        else:
            messages.success(request, f"Run #{run_id} {run.name} was deleted.")
            return _redirect(request, reverse("training:run_list"))
    context = {"run": run, "dependants": found, "refusal": refusal, "counts": selectors.run_contents(run=run)}
    status = 409 if request.method == "POST" else 200
    return render(request, "training/run_delete.html", context, status=status)


@researcher_required
@require_http_methods(["GET", "POST"])
def panel_pins(request: AuthedHttpRequest) -> HttpResponse:
    """The user's pinned chart panels: GET `{"keys": [...]}`; POST the same to replace them (order = position)."""
    if request.method == "POST":
        try:
            body = orjson.loads(request.body or b"null")  # a lone surrogate is invalid JSON here, not a 500
            keys = panels.clean_pins(body.get("keys") if isinstance(body, dict) else None)
        except ValueError:
            return JsonResponse({"error": "The body is not JSON.", "field": "body"}, status=400)
        except ValidationError as exc:
            field, errors = next(iter(exc.message_dict.items()))
            return JsonResponse({"error": " ".join(errors), "field": field}, status=400)
        panels.set_pins(user=request.user, keys=keys)
    return JsonResponse({"keys": panels.pinned_keys(user=request.user)})


@researcher_required
@require_POST
def run_cancel(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    return _act(request, run_id, "cancel")


@researcher_required
@require_POST
def run_retry(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    return _act(request, run_id, "retry")


@researcher_required
@require_POST
def run_resume(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    return _act(request, run_id, "resume")


@researcher_required
@vary_on_headers("HX-Request")
def run_compare(request: AuthedHttpRequest) -> HttpResponse:
    """`?runs=1&runs=2` (or `?runs=1,2`): overlaid curves and the config diff."""
    ids = parse_ids(request.GET.getlist("runs"), limit=10)
    chosen = list(selectors.visible_runs(user=request.user).filter(id__in=ids).order_by("id"))
    candidates = list(selectors.visible_runs(user=request.user).order_by("-created_at")[:50])
    show_all = request.GET.get("all") == "1"
    configs = [r.config or {} for r in chosen]
    context = {
        "runs": chosen,
        "candidates": candidates,
        "chosen_ids": [r.id for r in chosen],
        "diff": selectors.config_diff(runs=chosen) if len(chosen) > 1 else [],
        "diff_sections": diff_sections(configs=configs, only_differences=not show_all) if len(chosen) > 1 else [],
        "show_all": show_all,
        "runs_param": ",".join(str(r.id) for r in chosen),
        "keys": selectors.summary_keys(runs=chosen) if chosen else [],
        "trace_names": [f"#{r.id} {r.name}" for r in chosen],
    }
    if getattr(request, "htmx", False) and request.GET.get("part") == "diff":
        return render(request, "training/run_compare.html#config-diff", context)
    return render(request, "training/run_compare.html", context)


@researcher_required
def api_keys(request: AuthedHttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST or None)
    new_key = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            _, new_key = runs.issue_api_token(user=request.user, name=form.cleaned_data["name"])
            form = ApiKeyForm()
        else:
            status = 422
    keys = ApiToken.objects.filter(user=request.user).order_by("-created_at")
    return render(request, "training/api_keys.html", {"form": form, "keys": keys, "new_key": new_key}, status=status)


@researcher_required
@require_POST
def api_key_revoke(request: AuthedHttpRequest, key_id: int) -> HttpResponse:
    # Admins may revoke anyone's key (a leaked key is an emergency); others only their own.
    keys = ApiToken.objects.all() if request.user.is_admin_role else ApiToken.objects.filter(user=request.user)
    key = get_object_or_404(keys, id=key_id)
    runs.revoke_api_token(token=key)
    return redirect("training:api_keys")
