"""Training runs and what they report: status history, metric chunks and rollups, logs, checkpoints, tables, API keys.

Metric storage is shaped for millions of points per run and thousands of runs in PostgreSQL:
- MetricChunk holds up to CHUNK_STEPS consecutive steps of one series in one row, as packed
  little-endian arrays (steps int64, values float64, times float64): ~24 bytes a point instead of
  ~100 for a row plus its index entry, and PostgreSQL does per-row work (heap tuple, index entry,
  WAL record) once per ~320 points. Its key (run, key, step // CHUNK_STEPS) makes placement
  deterministic, so a re-sent point lands in the chunk that already holds it and is dropped.
- MetricRollup holds min/max per fixed-width step bucket at a few widths, maintained in the same
  statement that writes the chunks, so a chart of a 1,000,000-point series reads ~1,000 rollup
  rows instead of a million points.
- MetricSummary holds the last value of each key per run: the run list sorts by any final metric
  without touching the points.
"""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    LOST = "lost", "Lost"


class RunOrigin(models.TextChoices):
    """How a run came to be, relative to its `parent`."""

    LAUNCHED = "launched", "Launched"
    RETRY = "retry", "Retry"  # the parent's recipe and config again, from step 1
    RESUME = "resume", "Resume"  # continues from a checkpoint of the parent (or of the parent's own ancestors)


ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
TERMINAL_STATUSES = frozenset(set(RunStatus) - ACTIVE_STATUSES)
EXTERNAL_RECIPE = "external"  # a run created through the API by a script the platform did not start


def hash_token(token: str) -> str:
    """Tokens are stored as SHA-256: they are long random strings, so no salt or slow hash is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    # The prefix tells a run token from a user API key in logs and error messages.
    return f"{prefix}_{secrets.token_urlsafe(32)}"


class Run(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs")
    name = models.CharField(max_length=200)
    recipe = models.CharField(max_length=64)
    config = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=32, default="gpu")
    # GPUs the run asks for: it starts (under torchrun when > 1) only on a worker with that many free slots.
    gpus = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    # Visible to every researcher when true; otherwise to its owner and admins only.
    shared = models.BooleanField(default=False)
    token_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    pgid = models.IntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    origin = models.CharField(max_length=16, choices=RunOrigin.choices, default=RunOrigin.LAUNCHED)
    resume_from = models.CharField(max_length=1000, blank=True)
    # The checkpoint a resumed run started from: the parent's newest, or an ancestor's when the parent wrote none.
    resume_checkpoint = models.ForeignKey(
        "Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="resumed_runs"
    )
    # Archived runs leave the run list (a filter shows them) but keep everything; deleting is separate.
    archived_at = models.DateTimeField(null=True, blank=True)
    # Sequence number of the last live event: the page discards deltas older than its backlog.
    event_seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="run_owner_created"),
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=RunStatus.values), name="run_status_valid"),
            models.CheckConstraint(condition=models.Q(origin__in=RunOrigin.values), name="run_origin_valid"),
            models.CheckConstraint(
                condition=~models.Q(status=RunStatus.RUNNING) | models.Q(started_at__isnull=False),
                name="run_running_has_started_at",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    def get_absolute_url(self) -> str:
        return reverse("training:run_detail", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_external(self) -> bool:
        return self.recipe == EXTERNAL_RECIPE

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()


class RunTag(models.Model):
    """A run's tags as rows (not a JSON list): filtering by tag is an index lookup on every database."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=50)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="runtag_unique")]
        indexes = [models.Index(fields=["name"], name="runtag_name")]

    def __str__(self) -> str:
        return self.name


class RunTransition(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="transitions")
    status = models.CharField(max_length=16, choices=RunStatus.choices)
    at = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=RunStatus.values), name="transition_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.status} at {self.at:%Y-%m-%d %H:%M:%S}"


class MetricKey(models.Model):
    """Metric names, shared by all runs: a point stores a 4-byte id instead of the name."""

    id = models.AutoField(primary_key=True)
    name = models.CharField(max_length=200, unique=True)

    def __str__(self) -> str:
        return self.name


# Steps per chunk: 320 points x 24 bytes = 7,680 bytes, so a full chunk fills one 8 KB page and is
# stored inline, uncompressed (the migration sets toast_tuple_target so PostgreSQL does not try to
# compress float64 noise it cannot shrink).
CHUNK_STEPS = 320


class MetricChunk(models.Model):
    """Points of one series with steps in [chunk x CHUNK_STEPS, (chunk + 1) x CHUNK_STEPS), sorted by step.

    `steps`, `values` and `times` are packed little-endian arrays of `n` int64 / float64 / float64
    (numpy.frombuffer reads them without a copy); training/services/ingest.py is their only writer.

    Why chunks and not one row per point (the design's first sketch): PostgreSQL spends ~2 µs per row on
    heap + primary-key insert whatever the row's width, which capped one run's ingest near 130k points/s on
    2 cores. A chunk of CHUNK_STEPS points fits one 8 KB page, and the write costs ~0.8 µs per point
    (bench/bench_runs.py). Idempotency on (run, key, step) is kept by merging: a re-sent point is dropped.
    """

    pk = models.CompositePrimaryKey("run", "key", "chunk")
    # No database FK constraints on the hot tables: a constraint costs index probes per written row.
    # Only record_metrics writes here, for a run it has just locked; Django still cascades a run's
    # deletion (one DELETE by run_id).
    run = models.ForeignKey(Run, on_delete=models.CASCADE, db_index=False, db_constraint=False)
    key = models.ForeignKey(MetricKey, on_delete=models.DO_NOTHING, db_index=False, db_constraint=False)
    chunk = models.BigIntegerField()
    n = models.IntegerField()
    last_step = models.BigIntegerField()  # lets a batch that only appends skip reading the chunk
    steps = models.BinaryField()
    values = models.BinaryField()
    times = models.BinaryField()  # unix seconds: the chart's other x axis

    def __str__(self) -> str:
        return f"{self.key_id} chunk {self.chunk} ({self.n} points)"


class MetricRollup(models.Model):
    """Min and max of a series over steps [bucket x width, (bucket + 1) x width)."""

    pk = models.CompositePrimaryKey("run", "key", "width", "bucket")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, db_index=False, db_constraint=False)
    key = models.ForeignKey(MetricKey, on_delete=models.DO_NOTHING, db_index=False, db_constraint=False)
    width = models.IntegerField()
    bucket = models.BigIntegerField()
    n = models.IntegerField()
    min_step = models.BigIntegerField()
    min_value = models.FloatField()
    min_time = models.FloatField()
    max_step = models.BigIntegerField()
    max_value = models.FloatField()
    max_time = models.FloatField()

    def __str__(self) -> str:
        return f"{self.key_id} w{self.width} b{self.bucket}"


class MetricSummary(models.Model):
    """The latest point of each series of a run (its "final" value) and its point count."""

    pk = models.CompositePrimaryKey("run", "key")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="summaries", db_index=False)
    key = models.ForeignKey(MetricKey, on_delete=models.PROTECT, related_name="+")
    n = models.BigIntegerField()
    last_step = models.BigIntegerField()
    last_value = models.FloatField()
    last_time = models.FloatField()
    min_value = models.FloatField()
    max_value = models.FloatField()

    def __str__(self) -> str:
        return f"{self.key_id} last={self.last_value}@{self.last_step}"


class LogLine(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_lines", db_index=False)
    stream = models.CharField(max_length=8)  # stdout | stderr | client
    seq = models.BigIntegerField()  # the producer's line number: a re-sent line is a no-op
    text = models.TextField()
    time = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "stream", "seq"], name="logline_unique")]
        indexes = [models.Index(fields=["run", "id"], name="logline_run_id")]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq}: {self.text[:60]}"


class Checkpoint(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.BigIntegerField()
    path = models.CharField(max_length=1000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_unique_step")]

    def __str__(self) -> str:
        return f"step {self.step}: {self.path}"


class RunTable(models.Model):
    """A small table a run logged at a step (prompts, completions, rewards): the run page's Samples.

    Keyed on (run, name, step) like metric points: a re-sent table changes nothing (the first one wins).
    Cells are model outputs, untrusted: the page shows them as escaped plain text.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tables")
    name = models.CharField(max_length=64)
    step = models.BigIntegerField()
    columns = models.JSONField()
    rows = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "name", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "name", "step"], name="runtable_once_per_step")]

    def __str__(self) -> str:
        return f"{self.name} @ step {self.step} ({len(self.rows)} rows)"


class ApiToken(models.Model):
    """A user's API key for scripts started outside the platform (`arbiter_client.init`)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)  # first characters, so a user can tell keys apart
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class PinnedPanel(models.Model):
    """A metric chart a user pinned: shown first, in `position` order, on every run page that has that metric.

    Per user and by metric name, not per run: a researcher who watches `reward` and `kl` wants them first on
    every run, including runs that do not exist yet. Stored server-side so pins follow the user across browsers.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pinned_panels")
    key = models.CharField(max_length=200)
    position = models.PositiveIntegerField()

    class Meta:
        ordering = ["user", "position"]
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="pinnedpanel_once_per_key")]

    def __str__(self) -> str:
        return f"{self.key} #{self.position}"
