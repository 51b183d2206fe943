"""Human studies: studies, items, assignments (leases), judgments, rubric flags and export jobs.

The database refuses what must never happen: an item with more live assignments
than its overlap (CheckConstraint on the item's counters), an annotator with the
same item twice (UniqueConstraint), two judgments for one assignment
(OneToOneField), two open assignments for one annotator in one study.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class StudyKind(models.TextChoices):
    PAIRWISE = "pairwise", "Pairwise preference"
    RUBRIC = "rubric", "Rubric grading"
    VIOLATION = "violation", "Policy violations (agent trajectories)"
    RATING = "rating", "Rating (Likert)"


DEFAULT_SCALE = ["Very poor", "Poor", "Acceptable", "Good", "Excellent"]


class TextFormat(models.TextChoices):
    PLAIN = "plain", "Plain text: every character as written; conversations as chat bubbles"
    MARKDOWN = "markdown", "Markdown (sanitised): for items written in Markdown"


class Study(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="owned_studies")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=StudyKind.choices)
    instructions = models.TextField(blank=True, help_text="Markdown, shown to annotators above every item.")
    text_format = models.CharField(
        max_length=10,
        choices=TextFormat.choices,
        default=TextFormat.PLAIN,
        help_text="How items are shown to annotators. Plain text shows what the data says, character for character.",
    )
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Judgments per item, from different annotators.")
    lease_seconds = models.PositiveIntegerField(
        default=900, help_text="How long an annotator holds an item before it returns to the queue."
    )
    accuracy_threshold = models.FloatField(
        default=0.7, help_text="Annotators whose gold accuracy falls below this are flagged."
    )
    scale_labels = models.JSONField(default=list, blank=True, help_text="Rating studies: one label per point.")
    shared_with = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="shared_studies")
    annotators = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="annotated_studies")
    item_count = models.PositiveIntegerField(default=0, editable=False)  # kept by services.add_items
    created_at = models.DateTimeField(auto_now_add=True)
    # Archived: off the study list (a filter shows it) and out of annotators' queues; nothing is deleted.
    archived_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=StudyKind.values), name="study_kind_valid"),
            models.CheckConstraint(condition=Q(text_format__in=TextFormat.values), name="study_text_format_valid"),
            models.CheckConstraint(condition=Q(overlap__gte=1) & Q(overlap__lte=50), name="study_overlap_range"),
            models.CheckConstraint(condition=Q(lease_seconds__gte=10), name="study_lease_min"),
            models.CheckConstraint(
                condition=Q(accuracy_threshold__gte=0) & Q(accuracy_threshold__lte=1), name="study_threshold_range"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def scale(self) -> list[str]:
        return list(self.scale_labels) or DEFAULT_SCALE


class StudyTag(models.Model):
    """A study's tags as rows, like a run's: the study list filters by tag with an index lookup."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=50)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "name"], name="studytag_unique")]
        indexes = [models.Index(fields=["name"], name="studytag_name")]

    def __str__(self) -> str:
        return self.name


class Item(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField(default=0)
    external_id = models.CharField(max_length=200, blank=True)
    payload = models.JSONField()
    # Markdown studies: sanitised HTML of the payload's text fields (evaluation.rendering.render_item), made at
    # import so the annotator's page does not parse markdown; stamped with the payload's digest and re-sanitised
    # on display, so a stale or tampered value is re-rendered or stripped, never trusted. Empty for plain text.
    rendered = models.JSONField(default=dict, blank=True, editable=False)
    is_gold = models.BooleanField(default=False)
    expected = models.JSONField(null=True, blank=True)
    # A violation task imported without its trajectory (ST-WebAgentBench's task file): overlap 0, so the
    # queue skips it, until a trajectory for its task_id arrives (services.imports).
    waiting = models.BooleanField(default=False)
    # Copied from the study so a row-level CheckConstraint can refuse over-assignment.
    overlap = models.PositiveSmallIntegerField(default=1)
    # Live assignments: completed ones plus leases not yet released. The queue's test is claimed < overlap.
    claimed = models.PositiveSmallIntegerField(default=0)
    judgment_count = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(claimed__lte=F("overlap")), name="item_never_over_assigned"),
            models.CheckConstraint(condition=Q(judgment_count__lte=F("claimed")), name="item_judgments_within_claims"),
        ]
        indexes = [
            # The queue scan: only items with a free slot, in study order.
            models.Index(fields=["study", "position", "id"], condition=Q(claimed__lt=F("overlap")), name="item_open"),
        ]

    def __str__(self) -> str:
        return f"item {self.pk} of study {self.study_id}"


class Assignment(models.Model):
    """One annotator's lease on one item. Closed by a judgment, a skip, or release after expiry."""

    # No single-column FK indexes: the composite ones below cover every lookup, and an index on
    # annotator alone tempted the planner into scanning all of an annotator's assignments per
    # candidate item instead of probing (item, annotator).
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="assignments", db_index=False)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments", db_index=False)
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments", db_index=False
    )
    leased_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)  # lease expired and its slot went back
    skipped = models.BooleanField(default=False)
    flagged = models.BooleanField(default=False)
    flag_reason = models.CharField(max_length=500, blank=True)
    # Blinding: True when response B is shown on the left. Recorded so every verdict can be un-swapped.
    swapped = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="assignment_once_per_annotator"),
            models.UniqueConstraint(
                fields=["study", "annotator"],
                condition=Q(completed_at__isnull=True, released_at__isnull=True),
                name="assignment_one_open_per_annotator",
            ),
        ]
        indexes = [
            models.Index(
                fields=["study", "lease_expires_at"],
                condition=Q(completed_at__isnull=True, released_at__isnull=True),
                name="assignment_open_lease",
            ),
            models.Index(fields=["study", "annotator", "id"], name="assignment_latest"),
        ]

    def __str__(self) -> str:
        return f"assignment {self.pk}: item {self.item_id} to user {self.annotator_id}"

    @property
    def is_open(self) -> bool:
        return self.completed_at is None and self.released_at is None


class Judgment(models.Model):
    """A verdict; payload is typed per study kind (see evaluation.forms) and stored un-swapped."""

    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="judgment")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="judgments")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="judgments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgments")
    payload = models.JSONField()
    time_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["study", "annotator"], name="judgment_study_annotator")]

    def __str__(self) -> str:
        return f"judgment {self.pk} on item {self.item_id}"


class AutomaticJudgment(models.Model):
    """A verdict from a program (ST-WebAgentBench's evaluator), kept apart from people's judgments.

    The payload has the shape of a violation judgment (evaluation.judgments), with `step` None where
    the judge did not say which step violated a policy, plus `total_reward`.
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="automatic_judgments")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="automatic_judgments")
    judge = models.CharField(max_length=100)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["item", "judge"], name="automatic_judgment_once_per_judge")]

    def __str__(self) -> str:
        return f"{self.judge} on item {self.item_id}"


class RubricItemFlag(models.Model):
    """An annotator's vote that a rubric item is badly written (rubric approval)."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="rubric_flags")
    rubric_index = models.PositiveSmallIntegerField()
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rubric_flags")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "rubric_index", "annotator"], name="rubric_flag_once"),
        ]

    def __str__(self) -> str:
        return f"flag on rubric item {self.rubric_index} of item {self.item_id}"


class ImportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Reading"
    DONE = "done", "Imported"
    REJECTED = "rejected", "Rejected (invalid rows)"
    FAILED = "failed", "Failed"


class ImportJob(models.Model):
    """One upload of items: read as a stream into staged rows, then published into the study at once (or not at all)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="imports")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    filename = models.CharField(max_length=255, blank=True)
    path = models.CharField(max_length=500, blank=True)  # the stored upload of a background import (ARTIFACT_ROOT)
    size_bytes = models.BigIntegerField(default=0)
    import_valid_rows = models.BooleanField(default=False)
    flag_unsplittable = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=ImportStatus.choices, default=ImportStatus.QUEUED)
    container = models.CharField(max_length=60, blank=True)
    bytes_read = models.BigIntegerField(default=0)
    rows_read = models.PositiveIntegerField(default=0)
    created_items = models.PositiveIntegerField(default=0)
    waiting_items = models.PositiveIntegerField(default=0)
    attached = models.PositiveIntegerField(default=0)  # trajectories given to items that waited for one
    verdicts = models.PositiveIntegerField(default=0)  # automatic judgments stored
    flagged_rows = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)  # the first MAX_ERRORS [{line, field, message}]
    message = models.TextField(blank=True)  # why a whole file was refused or failed
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ImportStatus.values), name="import_status_valid"),
        ]

    def __str__(self) -> str:
        return f"import {self.pk} of study {self.study_id}"

    @property
    def percent(self) -> int:
        if self.status in (ImportStatus.DONE, ImportStatus.REJECTED):
            return 100
        return min(99, int(100 * self.bytes_read / self.size_bytes)) if self.size_bytes else 0

    @property
    def finished(self) -> bool:
        return self.status in (ImportStatus.DONE, ImportStatus.REJECTED, ImportStatus.FAILED)


class ImportRow(models.Model):
    """A parsed row staged by an import that has not finished: nothing outside the import sees it."""

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="+", db_index=False)
    seq = models.PositiveIntegerField()
    line = models.PositiveIntegerField(default=0)
    attachment = models.BooleanField(default=False)  # a trajectory/verdict for an item keyed by task_id
    payload = models.JSONField()
    rendered = models.JSONField(default=dict)
    is_gold = models.BooleanField(default=False)
    expected = models.JSONField(null=True)
    external_id = models.CharField(max_length=200, blank=True)
    waiting = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="import_row_seq_unique")]

    def __str__(self) -> str:
        return f"staged row {self.seq} of import {self.job_id}"


class ExportFormat(models.TextChoices):
    JUDGMENTS_JSONL = "judgments_jsonl", "Judgments (JSONL)"
    JUDGMENTS_CSV = "judgments_csv", "Judgments (CSV)"
    REWARD = "reward", "Reward data (versioned dataset)"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class RewardStyle(models.TextChoices):
    AUTO = "auto", "As imported (conversational when the study has conversations, else standard strings)"
    CONVERSATIONAL = "conversational", "Conversational messages (TRL conversational preference)"
    STANDARD = "standard", "Standard strings (TRL standard preference; HH transcripts byte for byte)"


class ExportJob(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="exports")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    format = models.CharField(max_length=20, choices=ExportFormat.choices)
    keep_ties = models.BooleanField(default=False, help_text="Pairwise reward data: keep ties (as chosen/rejected).")
    style = models.CharField(max_length=16, choices=RewardStyle.choices, default=RewardStyle.AUTO)
    status = models.CharField(max_length=10, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    version = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    rows = models.PositiveIntegerField(default=0)
    path = models.CharField(max_length=500, blank=True)  # relative to ARTIFACT_ROOT
    # SHA-256 of the exported file: the dataset version a run trained on is named by it in the lineage.
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ExportStatus.values), name="export_status_valid"),
            models.CheckConstraint(condition=Q(format__in=ExportFormat.values), name="export_format_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_format_display()} export {self.pk} of study {self.study_id}"

    @property
    def percent(self) -> int:
        return 100 if self.status == ExportStatus.DONE else int(100 * self.done / self.total) if self.total else 0
