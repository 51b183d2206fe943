"""The loop's stored links: which policy wrote each judged text, which export trained which run, sampling jobs.

Why a third app: `training` (runs, checkpoints) and `evaluation` (studies, judgments) do not import each
other; the loop joins them (export → run → checkpoint → study → leaderboard), so it depends on both and
neither depends on it. Their pages show the loop's links through htmx fragments served here.

- Policy: something whose outputs people judged — a step of a platform run (a checkpoint, or samples the
  run logged while training), or a model path outside any run. The leaderboard rates policies.
- ItemSource: which policy produced which side of a study item (stored provenance, never shown to annotators).
- RunInput: a reward-data export a run trained on (PROTECT: an export that trained a run cannot be deleted).
- SampleJob: one "Sample into a study" request, its progress, and the study it made.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone


class PolicyKind(models.TextChoices):
    RUN = "run", "A step of a platform run"
    MODEL = "model", "A model path"


class Policy(models.Model):
    kind = models.CharField(max_length=8, choices=PolicyKind.choices)
    # SET_NULL, not CASCADE: deleting a run must not erase what people said about its outputs.
    run = models.ForeignKey("training.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="policies")
    step = models.BigIntegerField(null=True, blank=True)
    checkpoint = models.ForeignKey(
        "training.Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="policies"
    )
    model_path = models.CharField(max_length=1000, blank=True)  # what the sampler loaded
    label = models.CharField(max_length=300)  # what results and the leaderboard show
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run_id", "step", "id"]
        verbose_name_plural = "policies"
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=PolicyKind.values), name="policy_kind_valid"),
            models.UniqueConstraint(fields=["run", "step"], condition=Q(run__isnull=False), name="policy_run_step"),
            models.UniqueConstraint(fields=["model_path"], condition=Q(kind=PolicyKind.MODEL), name="policy_model"),
            models.CheckConstraint(condition=~Q(kind=PolicyKind.MODEL) | ~Q(model_path=""), name="policy_model_path"),
        ]

    def __str__(self) -> str:
        return self.label


class ItemSource(models.Model):
    """Side `side` of study item `item` was written by `policy` (sample number `sample` of its prompt)."""

    item = models.ForeignKey("evaluation.Item", on_delete=models.CASCADE, related_name="sources")
    side = models.CharField(max_length=16)  # pairwise "a" | "b"; rating "response"; rubric "plan0" | "plan1"
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="item_sources")
    sample = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "side"], name="itemsource_one_per_side")]
        indexes = [models.Index(fields=["policy", "item"], name="itemsource_policy")]

    def __str__(self) -> str:
        return f"item {self.item_id} side {self.side}: {self.policy_id}"


class RunInput(models.Model):
    """The run trained on this export's file (its config field `field` named it)."""

    run = models.ForeignKey("training.Run", on_delete=models.CASCADE, related_name="inputs")
    # PROTECT: the database itself refuses to delete an export that a run used (and so its study).
    export = models.ForeignKey("evaluation.ExportJob", on_delete=models.PROTECT, related_name="run_inputs")
    field = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "field"], name="runinput_one_per_field")]

    def __str__(self) -> str:
        return f"run {self.run_id} {self.field} = export {self.export_id}"


class SampleStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Sampling"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


SAMPLE_ACTIVE = frozenset({SampleStatus.QUEUED, SampleStatus.RUNNING})


class PromptSource(models.TextChoices):
    FILE = "file", "A file of prompts"
    STUDY = "study", "A study's prompts"
    RUN = "run", "A run's prompts (its held-out split when it has one, else its training prompts)"


class SampleJob(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sample_jobs")
    name = models.CharField(max_length=200)  # the study's name
    study_kind = models.CharField(max_length=16)
    status = models.CharField(max_length=10, choices=SampleStatus.choices, default=SampleStatus.QUEUED)
    queue = models.CharField(max_length=32, default="gpu")
    policies: models.ManyToManyField[Policy, SampleJobPolicy] = models.ManyToManyField(
        Policy, through="SampleJobPolicy", related_name="sample_jobs"
    )
    prompt_source = models.CharField(max_length=8, choices=PromptSource.choices)
    prompt_label = models.CharField(max_length=300)  # "prompts.jsonl", "study #4 helpfulness", "run #7 eval split"
    prompt_study = models.ForeignKey(
        "evaluation.Study", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    prompt_run = models.ForeignKey("training.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    prompt_count = models.PositiveIntegerField(default=0)
    # temperature, top_p, max_new_tokens, n, seed, backend (validated by loop.forms / services)
    sampling = models.JSONField(default=dict)
    # overlap, annotator ids, instructions, skip_identical: how the study is made at the end
    study_options = models.JSONField(default=dict)
    study = models.ForeignKey(
        "evaluation.Study", null=True, blank=True, on_delete=models.SET_NULL, related_name="sample_jobs"
    )
    total = models.PositiveIntegerField(default=0)  # completions to sample
    done = models.PositiveIntegerField(default=0)
    skipped_identical = models.PositiveIntegerField(default=0)  # pairs left out: both sides were the same text
    backend = models.CharField(max_length=8, blank=True)  # what the engine used: hf | vllm
    seconds = models.FloatField(null=True, blank=True)  # generation time, for completions per second
    error = models.TextField(blank=True)  # why a job failed
    notes = models.TextField(blank=True)  # what a finished job left out, and why
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=SampleStatus.values), name="samplejob_status_valid"),
            models.CheckConstraint(condition=Q(done__lte=models.F("total")), name="samplejob_done_within_total"),
        ]

    def __str__(self) -> str:
        return f"sample job {self.pk}: {self.name}"

    def get_absolute_url(self) -> str:
        return reverse("loop:sample_job", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.status in SAMPLE_ACTIVE

    @property
    def percent(self) -> int:
        if self.status == SampleStatus.DONE:
            return 100
        return int(100 * self.done / self.total) if self.total else 0

    @property
    def completions_per_s(self) -> float | None:
        return self.total / self.seconds if self.seconds and self.status == SampleStatus.DONE else None


class SampleJobPolicy(models.Model):
    job = models.ForeignKey(SampleJob, on_delete=models.CASCADE, related_name="members")
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "policy"], name="samplejobpolicy_once"),
            models.UniqueConstraint(fields=["job", "position"], name="samplejobpolicy_position"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} #{self.position}: policy {self.policy_id}"
