"""Reads of the loop app: lineage (export → run → checkpoints → studies, both ways) and the leaderboard.

Everything is filtered by what the reader may see: studies they own or were shared (evaluation's rule),
runs they own or that are shared (training's rule). A link to something the reader may not see is left out,
so neither ids nor names leak through the lineage.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet
from django.http import Http404

from arbiter.accounts.models import User
from evaluation import stats
from evaluation.models import ExportJob, Judgment, Study, StudyKind
from loop.models import ItemSource, Policy, RunInput, SampleJob, SampleJobPolicy
from training.models import Checkpoint, Run
from training.selectors import visible_runs

BOOTSTRAP = 200


# --------------------------------------------------------------------------- access


def visible_studies(*, user: User) -> QuerySet[Study]:
    if not getattr(user, "is_authenticated", False) or not user.is_researcher:
        return Study.objects.none()
    if user.is_admin_role:
        return Study.objects.all()
    return Study.objects.filter(Q(owner=user) | Q(shared_with=user)).distinct()


def visible_sample_jobs(*, user: User) -> QuerySet[SampleJob]:
    """A researcher's own sampling jobs (admins see all): a job shows prompts and settings of its owner."""
    qs = SampleJob.objects.select_related("owner", "study")
    return qs if user.is_admin_role else qs.filter(owner=user)


def get_sample_job_for(*, user: User, job_id: int) -> SampleJob:
    job = visible_sample_jobs(user=user).filter(pk=job_id).first()
    if job is None:
        raise Http404("No such sampling job.")
    return job


# --------------------------------------------------------------------------- lineage


@dataclass
class CheckpointLineage:
    step: int
    checkpoint: Checkpoint | None
    policy: Policy | None
    studies: list[Study] = field(default_factory=list)  # visible studies that judged this step's outputs


@dataclass
class RunLineage:
    run: Run
    inputs: list[tuple[str, ExportJob, Study | None]]  # (config field, export, its study if visible)
    parent: Run | None
    checkpoints: list[CheckpointLineage]
    derived: list[tuple[Run, int | None]]  # visible runs that started from one of this run's checkpoints
    sample_jobs: list[SampleJob]


def _studies_judging(*, user: User, policy_ids: list[int]) -> dict[int, list[Study]]:
    """For each policy, the visible studies whose items it wrote."""
    rows = (
        ItemSource.objects.filter(policy_id__in=policy_ids, item__study__in=visible_studies(user=user))
        .values_list("policy_id", "item__study_id")
        .distinct()
    )
    pairs = list(rows)
    studies = Study.objects.in_bulk({s for _, s in pairs})
    out: dict[int, list[Study]] = defaultdict(list)
    for policy_id, study_id in sorted(pairs, key=lambda r: (r[0], r[1])):
        out[policy_id].append(studies[study_id])
    return out


def _checkpoint_lineage(*, user: User, run: Run) -> list[CheckpointLineage]:
    checkpoints = {c.step: c for c in Checkpoint.objects.filter(run=run)}
    policies = {p.step: p for p in Policy.objects.filter(run=run) if p.step is not None}
    judged = _studies_judging(user=user, policy_ids=[p.pk for p in policies.values()])
    out = []
    for step in sorted(set(checkpoints) | set(policies)):
        policy = policies.get(step)
        studies = judged.get(policy.pk, []) if policy else []
        if step in checkpoints or studies:
            out.append(CheckpointLineage(step, checkpoints.get(step), policy, studies))
    return out


def run_lineage(*, user: User, run: Run) -> RunLineage:
    """Where a run's data came from, and where its checkpoints went."""
    studies = set(visible_studies(user=user).values_list("pk", flat=True))
    inputs = [
        (i.field, i.export, i.export.study if i.export.study_id in studies else None)
        for i in RunInput.objects.filter(run=run).select_related("export__study").order_by("field")
    ]
    parent = visible_runs(user=user).filter(pk=run.parent_id).first() if run.parent_id else None
    checkpoints = _checkpoint_lineage(user=user, run=run)
    paths = {c.checkpoint.path: c.step for c in checkpoints if c.checkpoint is not None}
    derived = []
    if paths:
        for child in visible_runs(user=user).filter(config__model_name_or_path__in=list(paths)).order_by("pk"):
            derived.append((child, paths.get(str((child.config or {}).get("model_name_or_path")))))
    jobs = list(
        visible_sample_jobs(user=user)
        .filter(pk__in=SampleJobPolicy.objects.filter(policy__run=run).values("job"))
        .order_by("-created_at")[:20]
    )
    return RunLineage(run, inputs, parent, checkpoints, derived, jobs)


@dataclass
class DownstreamRun:
    run: Run
    checkpoints: list[CheckpointLineage]


@dataclass
class ExportLineage:
    export: ExportJob
    runs: list[DownstreamRun]


@dataclass
class StudyLineage:
    study: Study
    made_by: SampleJob | None
    policies: list[tuple[Policy, Run | None]]  # who wrote its items (the run when visible)
    exports: list[ExportLineage]


def study_lineage(*, user: User, study: Study) -> StudyLineage:
    """Who wrote a study's items, and what its exports trained (and where those runs' checkpoints were judged)."""
    runs_qs = visible_runs(user=user)
    made_by = visible_sample_jobs(user=user).filter(study=study).first()
    policy_ids = ItemSource.objects.filter(item__study=study).values("policy").distinct()
    policies = list(Policy.objects.filter(pk__in=policy_ids).select_related("run").order_by("run_id", "step", "pk"))
    shown_runs = set(runs_qs.filter(pk__in=[p.run_id for p in policies if p.run_id]).values_list("pk", flat=True))
    exports = []
    for export in ExportJob.objects.filter(study=study, status="done").order_by("-version", "-pk"):
        runs = runs_qs.filter(pk__in=RunInput.objects.filter(export=export).values("run")).order_by("pk")
        exports.append(ExportLineage(export, [DownstreamRun(r, _checkpoint_lineage(user=user, run=r)) for r in runs]))
    return StudyLineage(
        study,
        made_by,
        [(p, p.run if p.run_id in shown_runs else None) for p in policies],
        exports,
    )


# --------------------------------------------------------------------------- leaderboard


@dataclass(frozen=True)
class Standing:
    """A policy's Bradley–Terry rating (Elo scale) with its 95% bootstrap interval, over every visible battle."""

    policy: Policy
    run: Run | None  # the policy's run when the reader may see it
    rating: float
    low: float
    high: float
    wins: int
    losses: int
    ties: int
    studies: int

    @property
    def games(self) -> int:
        return self.wins + self.losses + self.ties


def elo(theta: float) -> float:
    return 1000 + 400 / math.log(10) * theta


def policy_battles(*, user: User) -> tuple[list[stats.Battle], dict[int, set[int]]]:
    """Every judged pair of known policies in the studies `user` may see: pairwise verdicts and two-plan rubric
    preferences. Also, per policy, the studies it was judged in."""
    studies = visible_studies(user=user).filter(kind__in=[StudyKind.PAIRWISE, StudyKind.RUBRIC])
    sides: dict[int, dict[str, int]] = defaultdict(dict)
    study_of: dict[int, int] = {}
    sources = ItemSource.objects.filter(item__study__in=studies, side__in=["a", "b", "plan0", "plan1"])
    for item_id, side, policy_id, study_id in sources.values_list("item_id", "side", "policy_id", "item__study_id"):
        sides[item_id]["a" if side in {"a", "plan0"} else "b"] = policy_id
        study_of[item_id] = study_id
    battles: list[stats.Battle] = []
    judged_in: dict[int, set[int]] = defaultdict(set)
    rows = Judgment.objects.filter(item_id__in=sources.filter(side__in=["a", "plan0"]).values("item")).values_list(
        "item_id", "payload__choice", "payload__preference"
    )
    for item_id, choice, preference in rows.iterator(chunk_size=5000):
        pair = sides.get(item_id, {})
        winner = choice if choice in {"a", "b", "tie"} else preference
        if "a" not in pair or "b" not in pair or winner not in {"a", "b", "tie"}:
            continue
        if pair["a"] == pair["b"]:
            continue  # two samples of one policy (a training-time table's pair): no information on its rating
        battles.append(stats.Battle(str(pair["a"]), str(pair["b"]), winner))
        judged_in[pair["a"]].add(study_of[item_id])
        judged_in[pair["b"]].add(study_of[item_id])
    return battles, judged_in


def leaderboard(*, user: User, run: Run | None = None, bootstrap: int = BOOTSTRAP) -> list[Standing]:
    """Policies rated together over every visible battle, best first (only `run`'s, by step, when given)."""
    battles, judged_in = policy_battles(user=user)
    if not battles:
        return []
    ratings = stats.bradley_terry(battles, bootstrap=bootstrap, pseudo_count=0.5)
    counts = {int(w.model): w for w in stats.win_rates(battles)}
    policies = Policy.objects.in_bulk([int(r.model) for r in ratings])
    shown = set(
        visible_runs(user=user)
        .filter(pk__in=[p.run_id for p in policies.values() if p.run_id])
        .values_list("pk", flat=True)
    )
    runs = Run.objects.in_bulk(shown)
    out = []
    for r in ratings:
        policy = policies[int(r.model)]
        if run is not None and policy.run_id != run.pk:
            continue
        w = counts[policy.pk]
        out.append(
            Standing(
                policy=policy,
                run=runs.get(policy.run_id) if policy.run_id else None,
                rating=elo(r.strength),
                low=elo(r.low),
                high=elo(r.high),
                wins=w.wins,
                losses=w.losses,
                ties=w.ties,
                studies=len(judged_in[policy.pk]),
            )
        )
    if run is not None:
        out.sort(key=lambda s: s.policy.step if s.policy.step is not None else -1)
    return out


def sampleable_checkpoints(*, user: User, run: Run | None = None, recent_runs: int = 50) -> QuerySet[Checkpoint]:
    """Checkpoints a user may sample from: one run's, or those of the user's most recent visible runs."""
    runs = visible_runs(user=user)
    if run is not None:
        runs = runs.filter(pk=run.pk)
    else:
        runs = runs.filter(pk__in=list(runs.order_by("-created_at").values_list("pk", flat=True)[:recent_runs]))
    return Checkpoint.objects.filter(run__in=runs).select_related("run").order_by("-run__created_at", "run_id", "step")
