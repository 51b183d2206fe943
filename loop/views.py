"""Pages of the loop app: "Sample into a study", a job's live progress, the models list with its leaderboard,
and the lineage and leaderboard cards that the run and study pages load (htmx fragments)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from arbiter.accounts.decorators import researcher_required
from arbiter.ids import parse_ids
from evaluation.models import Study
from evaluation.selectors import get_study_for
from loop import prompt_sets, selectors
from loop.forms import SampleForm, SendRowsForm
from loop.models import PromptSource
from loop.services import sampling, table_items
from training.http import AuthedHttpRequest
from training.models import Run
from training.selectors import get_run_for, run_summaries, table_at, visible_runs

# The run's own measure of success drawn under its checkpoints' ratings: the first of these it logged.
REWARD_KEYS = ("reward", "rewards/accuracies", "accuracy", "eval/reward", "eval/accuracy", "mean_token_accuracy")


def _form_errors(form: Any, exc: ValidationError) -> None:
    """A service's ValidationError back on the form: each field's message on its field, the rest on top."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc)


def _page_run(request: AuthedHttpRequest) -> Run | None:
    raw = request.GET.get("run") or request.POST.get("from_run") or ""
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
        raise Http404("No such run.")
    return get_run_for(user=request.user, run_id=int(raw))


def _prompts(form: SampleForm) -> tuple[list[prompt_sets.PromptRow], str, Study | None, Run | None]:
    """The prompt set the form names (a seeded subset of at most max_prompts), its label, its study / run."""
    d = form.cleaned_data
    source, study, run = d["prompt_source"], None, None
    if source == PromptSource.FILE:
        upload = d["prompts_file"]
        rows = prompt_sets.prompts_from_file(upload.read())
        label = f"{upload.name} ({len(rows)} prompts)"
    elif source == PromptSource.STUDY:
        study = d["prompt_study"]
        rows = prompt_sets.prompts_from_study(study)
        label = f"study #{study.pk} {study.name}"
    else:
        run = d["prompt_run"]
        what, _ = prompt_sets.run_prompt_source(run)
        rows = prompt_sets.prompts_from_run(run)
        label = f"run #{run.pk} {run.name}: {what}"
    return prompt_sets.choose(rows, limit=d["max_prompts"], seed=d["seed"]), label, study, run


@researcher_required
def sample_new(request: AuthedHttpRequest) -> HttpResponse:
    """The form; `?run=<id>` offers that run's checkpoints (the run page's button), else recent runs'."""
    page_run = _page_run(request)
    initial: dict[str, Any] = {}
    if ids := request.GET.get("checkpoints"):
        initial["checkpoints"] = parse_ids([ids], limit=100)
    form = SampleForm(request.POST or None, request.FILES or None, user=request.user, run=page_run, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            d = form.cleaned_data
            try:
                prompts, label, study, run = _prompts(form)
                job = sampling.create_sample_job(
                    owner=request.user,
                    name=d["name"],
                    study_kind=d["study_kind"],
                    checkpoints=list(d["checkpoints"]),
                    model_paths=form.model_path_list(),
                    prompts=prompts,
                    prompt_source=d["prompt_source"],
                    prompt_label=label,
                    prompt_study=study,
                    prompt_run=run,
                    sampling=sampling.SamplingSettings(
                        temperature=d["temperature"],
                        top_p=d["top_p"],
                        max_new_tokens=d["max_new_tokens"],
                        n=d["n"],
                        seed=d["seed"],
                        backend=d["backend"],
                    ),
                    options=sampling.StudyOptions(
                        overlap=d["overlap"],
                        annotators=list(d["annotators"]),
                        instructions=d["instructions"],
                        skip_identical=d["skip_identical"],
                    ),
                    queue=d["queue"],
                )
            except ValidationError as exc:
                _form_errors(form, exc)
            else:
                return redirect(job.get_absolute_url())
        status = 422
    context = {"form": form, "page_run": page_run, "groups": form.checkpoint_groups()}
    return render(request, "loop/sample_new.html", context, status=status)


def _job_context(request: AuthedHttpRequest, job_id: int) -> dict[str, Any]:
    job = selectors.get_sample_job_for(user=request.user, job_id=job_id)
    members = list(job.members.select_related("policy__run").order_by("position"))
    return {"job": job, "members": members}


@researcher_required
def sample_job(request: AuthedHttpRequest, job_id: int) -> HttpResponse:
    return render(request, "loop/sample_job.html", _job_context(request, job_id))


@researcher_required
def sample_job_status(request: AuthedHttpRequest, job_id: int) -> HttpResponse:
    """The progress card, polled by htmx every second while the job is queued or sampling."""
    return render(request, "loop/sample_job.html#job-status", _job_context(request, job_id))


@researcher_required
@require_POST
def sample_job_cancel(request: AuthedHttpRequest, job_id: int) -> HttpResponse:
    job = selectors.get_sample_job_for(user=request.user, job_id=job_id)
    context = _job_context(request, job_id)
    try:
        sampling.cancel_sample_job(job=job)
    except ValidationError as exc:
        context["action_error"] = " ".join(exc.messages)
        return render(request, "loop/sample_job.html#job-status", context, status=409)
    context["job"].refresh_from_db()
    if getattr(request, "htmx", False):
        return render(request, "loop/sample_job.html#job-status", context)
    return redirect(job.get_absolute_url())


@researcher_required
def send_table_rows(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """GET: the ticked rows of a samples table and where to send them; POST: make the items (then the study)."""
    run = get_run_for(user=request.user, run_id=run_id)
    data = request.POST if request.method == "POST" else request.GET
    name = data.get("name", "samples")
    raw_step = data.get("step", "")
    # Both are looked up before the form is read: no table has a name longer than a metric key's, or a NUL.
    if len(name) > SendRowsForm.base_fields["name"].max_length or "\x00" in name:  # type: ignore[attr-defined]
        raise Http404("No such table.")
    if raw_step and not (raw_step.isascii() and raw_step.isdigit() and len(raw_step) < 19):
        raise Http404("No such table.")
    table = table_at(run=run, name=name, step=int(raw_step) if raw_step else None)  # no step: the latest
    if table is None:
        raise Http404("No such table.")
    form = SendRowsForm(data, user=request.user, row_count=len(table.rows))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            d = form.cleaned_data
            target = d["target"]
            try:
                sent = table_items.send_table_rows(
                    user=request.user,
                    run=run,
                    table=table,
                    indexes=d["rows"],
                    study=form.studies.get(target),
                    new_kind=target.removeprefix("new-") if target.startswith("new-") else "",
                    new_name=d["new_name"],
                    annotators=list(d["annotators"]),
                )
            except ValidationError as exc:
                _form_errors(form, exc)
            else:
                if sent.added.error_count:
                    messages.warning(
                        request, f"{sent.added.error_count} rows could not be items: {sent.added.errors[0]}"
                    )
                messages.success(request, f"{sent.added.created} items added to {sent.study.name}.")
                return redirect("evaluation:study_detail", study_id=sent.study.pk)
        status = 422
    chosen = set(form["rows"].value() or [])
    rows = [(i, row) for i, row in enumerate(table.rows) if str(i) in {str(c) for c in chosen}]
    context = {"run": run, "table": table, "form": form, "rows": rows}
    return render(request, "loop/send_rows.html", context, status=status)


@researcher_required
def models(request: AuthedHttpRequest) -> HttpResponse:
    """Every rated checkpoint and model (Bradley–Terry over all visible battles), and checkpoints to sample."""
    standings = selectors.leaderboard(user=request.user)
    chart = [{"label": s.policy.label, "rating": s.rating, "low": s.low, "high": s.high} for s in standings]
    runs = visible_runs(user=request.user).filter(checkpoints__isnull=False).distinct().order_by("-created_at")[:50]
    context = {
        "standings": standings,
        "chart": chart,
        "checkpoints": selectors.sampleable_checkpoints(user=request.user),
        "runs": runs,
    }
    return render(request, "loop/models.html", context)


@researcher_required
def run_leaderboard(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """The run page's card: its checkpoints' ratings against training step, next to its reward curve."""
    run = get_run_for(user=request.user, run_id=run_id)
    standings = selectors.leaderboard(user=request.user, run=run)
    points = [
        {"step": s.policy.step, "rating": s.rating, "low": s.low, "high": s.high, "games": s.games}
        for s in standings
        if s.policy.step is not None
    ]
    keys = {row["key__name"] for row in run_summaries(run=run)}
    reward_key = next((k for k in REWARD_KEYS if k in keys), "")
    context = {"run": run, "standings": standings, "points": points, "reward_key": reward_key}
    return render(request, "loop/run_leaderboard.html", context)


@researcher_required
def run_lineage(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    run = get_run_for(user=request.user, run_id=run_id)
    return render(request, "loop/run_lineage.html", {"lineage": selectors.run_lineage(user=request.user, run=run)})


@researcher_required
def study_lineage(request: AuthedHttpRequest, study_id: int) -> HttpResponse:
    study = get_study_for(user=request.user, study_id=study_id)
    context = {"lineage": selectors.study_lineage(user=request.user, study=study)}
    return render(request, "loop/study_lineage.html", context)
