""" "Sample into a study": create a job, claim it on a worker, record its progress, and turn its completions into
a blinded study whose items record which policy wrote each side.

The study is made in one transaction at the end (items, their sources, the job's link): a failed or
cancelled job leaves no half-filled study behind. Items go through the study importer like an upload, so
they are normalised and rendered exactly as uploaded items are.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from arbiter.accounts.models import User
from arbiter.ids import parse_id
from evaluation import services as study_services
from evaluation.models import Study, StudyKind
from loop.models import Policy, PromptSource, SampleJob, SampleJobPolicy, SampleStatus
from loop.prompt_sets import MAX_PROMPTS, PromptRow
from loop.services.items import Sources, add_sourced_items
from loop.services.policies import policy_for_checkpoint, policy_for_model
from training.models import Checkpoint, Run
from training.selectors import visible_runs

MAX_POLICIES = 8
MAX_COMPLETIONS = 20_000
SAMPLE_KINDS = (StudyKind.PAIRWISE, StudyKind.RATING, StudyKind.RUBRIC)
# Seconds without a progress line before the sweep calls a running job's worker gone.
STALE_AFTER_S = 300
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn (every field has the form's range)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    n: int = 1
    seed: int = 0
    backend: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "n": self.n,
            "seed": self.seed,
            "backend": self.backend,
        }


@dataclass(frozen=True)
class StudyOptions:
    """How the study is made once the completions are in."""

    overlap: int = 1
    annotators: Sequence[User] = ()
    instructions: str = ""
    skip_identical: bool = True


def sample_set_dir(job_id: int) -> Path:
    """Where a job's prompt set, spec and completions live (the one place that decides it)."""
    return Path(settings.ARTIFACT_ROOT) / "samples" / f"job-{job_id}"


def check_model_path(*, user: User, path: str) -> str:
    """A model path a user may sample from: a hub id, or a folder of a run the user can see.

    Until the artifact store's shared access check lands, this is the whole rule: no local path outside
    the checkpoints of visible runs (a path is read by the worker, with the worker's rights).
    """
    value = path.strip()
    if not value:
        raise ValidationError({"model_paths": "empty model path"})
    if value == "tiny":
        raise ValidationError({"model_paths": "'tiny' is a random model built for training; pick a checkpoint"})
    if value.startswith("s3://"):
        # An artifact in the bucket: the store's own rule (readable when its run or study is).
        from artifacts.access import may_read

        if not may_read(user=user, value=value, model=True):
            raise ValidationError({"model_paths": f"{value}: not a model you may use"})
        return value
    if ".." in Path(value).parts:
        raise ValidationError({"model_paths": f"{value}: '..' is not allowed in a model path"})
    if value.startswith(("/", "~", ".", "file:")):
        local = Path(value.removeprefix("file://")).expanduser()
        runs_root = (Path(settings.ARTIFACT_ROOT) / "runs").resolve()
        try:
            relative = local.resolve().relative_to(runs_root)
        except ValueError:
            raise ValidationError(
                {"model_paths": f"{value}: local folders must be checkpoints of runs you can see; pick them above"}
            ) from None
        run_id = parse_id(relative.parts[0]) if relative.parts else None
        if run_id is None or not visible_runs(user=user).filter(id=run_id).exists():
            raise ValidationError({"model_paths": f"{value}: not a folder of a run you can see"})
        return str(local.resolve())
    if not _HUB_ID.match(value) or (Path(settings.BASE_DIR) / value).exists():
        raise ValidationError({"model_paths": f"{value}: not a hub model id (organisation/name)"})
    return value


def _validate(
    *,
    owner: User,
    study_kind: str,
    policies: int,
    prompts: list[PromptRow],
    sampling: SamplingSettings,
    options: StudyOptions,
    queue: str,
) -> None:
    if not owner.is_researcher:
        raise ValidationError("Only researchers sample into studies.")
    if study_kind == StudyKind.VIOLATION:
        raise ValidationError(
            {"study_kind": "Violation studies judge agent trajectories; sampling single completions makes none."}
        )
    if study_kind not in SAMPLE_KINDS:
        raise ValidationError({"study_kind": f"Unknown study kind {study_kind!r}."})
    if not 2 <= policies <= MAX_POLICIES:
        raise ValidationError({"checkpoints": f"Choose between 2 and {MAX_POLICIES} checkpoints or models."})
    if not prompts:
        raise ValidationError({"prompt_source": "The prompt set is empty."})
    if len(prompts) > MAX_PROMPTS:
        raise ValidationError({"max_prompts": f"At most {MAX_PROMPTS} prompts."})
    if study_kind == StudyKind.RUBRIC and not all(p.get("rubric") for p in prompts):
        raise ValidationError({"study_kind": "Rubric studies need a rubric with every prompt (a 'rubric' list)."})
    if sampling.temperature == 0 and sampling.n > 1:
        raise ValidationError({"n": "Greedy sampling (temperature 0) gives n identical completions; use n = 1."})
    if sampling.backend not in {"auto", "hf", "vllm"}:
        raise ValidationError({"backend": "Choose auto, hf or vllm."})
    total = policies * len(prompts) * sampling.n
    if total > MAX_COMPLETIONS:
        raise ValidationError({"max_prompts": f"{total} completions asked for; at most {MAX_COMPLETIONS} per job."})
    if queue not in getattr(settings, "ARBITER_RUN_QUEUES", ["gpu"]):
        raise ValidationError({"queue": f"Unknown queue {queue!r}."})
    if not 1 <= options.overlap <= 50:
        raise ValidationError({"overlap": "Between 1 and 50 judgments per item."})
    if any(not a.is_annotator for a in options.annotators):
        raise ValidationError({"annotators": "Only annotators can be assigned to a study."})


def create_sample_job(
    *,
    owner: User,
    name: str,
    study_kind: str,
    checkpoints: Sequence[Checkpoint],
    model_paths: Sequence[str] = (),
    prompts: list[PromptRow],
    prompt_source: str,
    prompt_label: str,
    prompt_study: Study | None = None,
    prompt_run: Run | None = None,
    sampling: SamplingSettings,
    options: StudyOptions,
    queue: str = "gpu",
) -> SampleJob:
    """Queue a job that samples each checkpoint / model on the prompts, then makes a study of the completions."""
    visible = set(visible_runs(user=owner).filter(id__in={c.run_id for c in checkpoints}).values_list("id", flat=True))
    if any(c.run_id not in visible for c in checkpoints):
        raise ValidationError({"checkpoints": "Some checkpoints belong to runs you cannot see."})
    paths = list(dict.fromkeys(check_model_path(user=owner, path=p) for p in model_paths if p.strip()))
    _validate(
        owner=owner,
        study_kind=study_kind,
        policies=len(checkpoints) + len(paths),
        prompts=prompts,
        sampling=sampling,
        options=options,
        queue=queue,
    )
    if prompt_source not in PromptSource.values:
        raise ValidationError({"prompt_source": "Choose a file, a study or a run."})
    with transaction.atomic():
        policies: list[Policy] = [policy_for_checkpoint(checkpoint=c) for c in checkpoints]
        policies += [policy_for_model(path=p) for p in paths]
        if len({p.pk for p in policies}) != len(policies):
            raise ValidationError({"checkpoints": "The same checkpoint or model is chosen twice."})
        job = SampleJob.objects.create(
            owner=owner,
            name=(name.strip() or _default_name(policies))[:200],
            study_kind=study_kind,
            queue=queue,
            prompt_source=prompt_source,
            prompt_label=prompt_label[:300],
            prompt_study=prompt_study,
            prompt_run=prompt_run,
            prompt_count=len(prompts),
            sampling=sampling.as_dict(),
            study_options={
                "overlap": options.overlap,
                "annotators": [a.pk for a in options.annotators],
                "instructions": options.instructions,
                "skip_identical": options.skip_identical,
            },
            total=len(policies) * len(prompts) * sampling.n,
        )
        SampleJobPolicy.objects.bulk_create(
            [SampleJobPolicy(job=job, policy=p, position=i) for i, p in enumerate(policies)]
        )
        folder = sample_set_dir(job.pk)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prompts.jsonl").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in prompts))
        from loop.tasks import run_sample_job  # tasks import this module

        transaction.on_commit(lambda: run_sample_job.apply_async((job.pk,), queue=queue))
    return job


def _default_name(policies: list[Policy]) -> str:
    return "Samples: " + " vs ".join(p.label for p in policies)


def claim_sample_job(*, job_id: int, worker: str) -> SampleJob | None:
    """queued → running for exactly one caller (a redelivered message finds it claimed and does nothing)."""
    now = timezone.now()
    claimed = SampleJob.objects.filter(pk=job_id, status=SampleStatus.QUEUED, cancel_requested_at__isnull=True).update(
        status=SampleStatus.RUNNING, worker=worker[:200], started_at=now, heartbeat_at=now
    )
    return SampleJob.objects.get(pk=job_id) if claimed else None


def record_progress(*, job_id: int, done: int) -> bool:
    """Store how many completions are written (and beat); True when a cancel was requested."""
    SampleJob.objects.filter(pk=job_id, status=SampleStatus.RUNNING, total__gte=done).update(
        done=done, heartbeat_at=timezone.now()
    )
    return SampleJob.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()


def fail_sample_job(*, job_id: int, error: str, cancelled: bool = False) -> None:
    status = SampleStatus.CANCELLED if cancelled else SampleStatus.FAILED
    SampleJob.objects.filter(pk=job_id, status__in=[SampleStatus.QUEUED, SampleStatus.RUNNING]).update(
        status=status, error=error[-4000:], finished_at=timezone.now()
    )


def cancel_sample_job(*, job: SampleJob) -> SampleJob:
    """A queued job ends now; a running one is stopped by its worker's next poll."""
    if not job.is_active:
        raise ValidationError(f"This job is already {job.get_status_display().lower()}.")
    now = timezone.now()
    SampleJob.objects.filter(pk=job.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=now)
    SampleJob.objects.filter(pk=job.pk, status=SampleStatus.QUEUED).update(
        status=SampleStatus.CANCELLED, finished_at=now, error="cancelled before it started"
    )
    job.refresh_from_db()
    return job


def mark_stale_sample_jobs(*, timeout_s: int = STALE_AFTER_S) -> list[int]:
    """Running jobs whose worker stopped reporting (killed, machine gone) fail with a message that says so."""
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    stale = list(
        SampleJob.objects.filter(status=SampleStatus.RUNNING, heartbeat_at__lt=cutoff).values_list("pk", flat=True)
    )
    for job_id in stale:
        fail_sample_job(job_id=job_id, error=f"the worker stopped reporting for {timeout_s} s; start the job again")
    return stale


# --------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Completion:
    text: str
    finished: bool


@dataclass
class BuiltItems:
    rows: list[dict[str, Any]]  # importer rows (the upload format), each with an "id"
    sources: Sources  # row id -> [(side, policy id, sample)]
    skipped_identical: int = 0
    skipped_empty: int = 0


def _as_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def build_items(
    *,
    job_id: int,
    kind: str,
    prompts: list[PromptRow],
    policies: list[Policy],
    completions: dict[tuple[int, int, int], Completion],
    n: int,
    seed: int,
    skip_identical: bool,
) -> BuiltItems:
    """Study rows from completions keyed (policy id, prompt index, sample).

    Pairwise and rubric: every pair of policies on each prompt and sample, A/B order drawn from the seed
    (annotators' sides are randomised again per assignment). Rating: one item per completion. A pair with
    the same text on both sides is left out when asked (nothing to judge); an empty completion cannot be
    shown as an item and is left out, counted.
    """
    rng = random.Random(seed)  # noqa: S311 - side order, not security
    built = BuiltItems(rows=[], sources={})
    for p, prompt_row in enumerate(prompts):
        prompt = prompt_row["prompt"]
        for s in range(n):
            if kind == StudyKind.RATING:
                for policy in policies:
                    c = completions[(policy.pk, p, s)]
                    if not c.text.strip():
                        built.skipped_empty += 1
                        continue
                    rid = f"sample-{job_id}-{len(built.rows) + 1}"
                    built.rows.append({"id": rid, "prompt": prompt, "response": c.text, "model": policy.label})
                    built.sources[rid] = [("response", policy.pk, s)]
                continue
            for first, second in itertools.combinations(policies, 2):
                x, y = (first, second) if rng.random() < 0.5 else (second, first)
                cx, cy = completions[(x.pk, p, s)], completions[(y.pk, p, s)]
                if not cx.text.strip() or not cy.text.strip():
                    built.skipped_empty += 1
                    continue
                if skip_identical and cx.text == cy.text:
                    built.skipped_identical += 1
                    continue
                rid = f"sample-{job_id}-{len(built.rows) + 1}"
                if kind == StudyKind.PAIRWISE:
                    row: dict[str, Any] = {
                        "prompt": prompt,
                        "response_a": cx.text,
                        "response_b": cy.text,
                        "model_a": x.label,
                        "model_b": y.label,
                    }
                    sides = [("a", x.pk, s), ("b", y.pk, s)]
                else:
                    row = {
                        "goal": _as_text(prompt),
                        "plans": [{"text": cx.text, "model": x.label}, {"text": cy.text, "model": y.label}],
                        "rubric": prompt_row["rubric"],
                    }
                    sides = [("plan0", x.pk, s), ("plan1", y.pk, s)]
                built.rows.append({"id": rid, **row})
                built.sources[rid] = sides
    return built


def read_completions(path: Path, keys: dict[str, int]) -> dict[tuple[int, int, int], Completion]:
    """The sampler's JSONL output keyed (policy id, prompt index, sample); `keys` maps its model keys to policy ids."""
    out: dict[tuple[int, int, int], Completion] = {}
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                row = orjson.loads(line)
                key = (keys[row["model"]], int(row["prompt_index"]), int(row["sample"]))
                out[key] = Completion(str(row["completion"]), bool(row["finished"]))
    return out


def model_key(policy: Policy) -> str:
    """The name a policy has inside the sampler's spec and output."""
    return f"p{policy.pk}"


def finish_sample_job(*, job_id: int, backend: str, seconds: float) -> SampleJob:
    """Make the job's study from its completions: items, their sources, annotators; the job is done."""
    job = SampleJob.objects.select_related("owner").get(pk=job_id)
    if job.study_id is not None:
        return job  # already made (a re-run of the end of a job)
    members = list(SampleJobPolicy.objects.filter(job=job).select_related("policy").order_by("position"))
    policies = [m.policy for m in members]
    folder = sample_set_dir(job.pk)
    prompts = [orjson.loads(line) for line in (folder / "prompts.jsonl").read_bytes().splitlines() if line.strip()]
    completions = read_completions(folder / "samples.jsonl", {model_key(p): p.pk for p in policies})
    options = job.study_options
    built = build_items(
        job_id=job.pk,
        kind=job.study_kind,
        prompts=prompts,
        policies=policies,
        completions=completions,
        n=int(job.sampling.get("n", 1)),
        seed=int(job.sampling.get("seed", 0)),
        skip_identical=bool(options.get("skip_identical", True)),
    )
    annotators = list(User.objects.filter(pk__in=options.get("annotators", [])))
    with study_services.write_transaction():
        locked = SampleJob.objects.select_for_update().get(pk=job.pk)
        if locked.study_id is not None:
            return locked
        study = study_services.create_study(
            owner=job.owner,
            name=job.name,
            kind=job.study_kind,
            instructions=str(options.get("instructions", "")),
            overlap=int(options.get("overlap", 1)),
            annotators=annotators,
        )
        added = add_sourced_items(study=study, rows=built.rows, sources=built.sources)
        notes = []
        if added.error_count:
            notes.append(f"{added.error_count} items could not be made (first: {added.errors[0]})")
        if built.skipped_identical:
            notes.append(f"{built.skipped_identical} pairs left out: both sides were the same text")
        if built.skipped_empty:
            notes.append(f"{built.skipped_empty} items left out: an empty completion")
        SampleJob.objects.filter(pk=job.pk).update(
            study=study,
            status=SampleStatus.DONE,
            done=job.total,
            backend=backend[:8],
            seconds=seconds,
            skipped_identical=built.skipped_identical,
            notes="; ".join(notes),
            finished_at=timezone.now(),
        )
    job.refresh_from_db()
    return job
