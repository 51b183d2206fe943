"""What the loop's rows need kept: registered with arbiter.dependants, so deleting a run or a study asks here first."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from arbiter.dependants import Dependant
from evaluation.models import Study
from loop.models import SAMPLE_ACTIVE, ItemSource, RunInput, SampleJob
from loop.selectors import visible_sample_jobs, visible_studies
from training.models import Run
from training.selectors import visible_runs


def _study(study_id: int, name: str, reason: str, visible: set[int]) -> Dependant:
    if study_id in visible:
        return Dependant(f"study #{study_id} {name}", reason, reverse("evaluation:study_detail", args=[study_id]))
    return Dependant(f"study #{study_id} of another researcher", reason)


def _jobs(jobs: Any, reason: str, user: Any) -> list[Dependant]:
    mine = set(visible_sample_jobs(user=user).values_list("id", flat=True))
    return [
        Dependant(f"sample job #{j.id}", reason, reverse("loop:sample_job", args=[j.id]) if j.id in mine else "")
        for j in jobs.distinct().order_by("id")
    ]


def run_dependants(run: Run, user: Any) -> list[Dependant]:
    """Studies holding outputs sampled from the run's checkpoints (their results name it), sampling under way."""
    visible = set(visible_studies(user=user).values_list("id", flat=True))
    studies = (
        ItemSource.objects.filter(policy__run=run)
        .values_list("item__study_id", "item__study__name")
        .distinct()
        .order_by("item__study_id")
    )
    out = [_study(sid, name, "its items were sampled from this run", visible) for sid, name in studies]
    active = SampleJob.objects.filter(members__policy__run=run, status__in=SAMPLE_ACTIVE)
    return out + _jobs(active, "is sampling from this run now", user)


def study_dependants(study: Study, user: Any) -> list[Dependant]:
    """Runs that trained on one of the study's exports, and sampling jobs reading from or writing into it."""
    visible = set(visible_runs(user=user).values_list("id", flat=True))
    out = []
    for run_id, name in (
        RunInput.objects.filter(export__study=study).values_list("run_id", "run__name").distinct().order_by("run_id")
    ):
        if run_id in visible:
            out.append(Dependant(f"run #{run_id} {name}", "trained on its export", f"/runs/{run_id}/"))
        else:
            out.append(Dependant(f"run #{run_id} of another researcher", "trained on its export"))
    into = SampleJob.objects.filter(study=study, status__in=SAMPLE_ACTIVE)
    prompts = SampleJob.objects.filter(prompt_study=study, status__in=SAMPLE_ACTIVE)
    return out + _jobs(into, "is writing into this study now", user) + _jobs(prompts, "reads its prompts now", user)
