"""Artifacts: every dataset, export, checkpoint and sample set, named by one URI in the artifact store.

Who may read an artifact follows the object it belongs to: a checkpoint is readable by whoever may see
its run (the owner, every researcher when the run is shared, admins); a study export by the study's
owner and the researchers it is shared with. An artifact that belongs to nothing is its owner's alone.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ArtifactKind(models.TextChoices):
    DATASET = "dataset", "Dataset"  # reward data a run trains on (a study's versioned reward export)
    EXPORT = "export", "Export"  # a study's judgments (CSV / JSON Lines)
    CHECKPOINT = "checkpoint", "Checkpoint"  # a run's Hugging Face folder (or its whole output location)
    SAMPLES = "samples", "Samples"  # a sampling job's prompts, spec and completions


class Artifact(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=16, choices=ArtifactKind.choices)
    # Canonical (artifacts.uris): file:///abs/path or s3://bucket/key; a folder's URI covers what is inside it.
    uri = models.CharField(max_length=1000, unique=True)
    size = models.BigIntegerField(default=0)  # bytes; 0 when not measured (a folder written remotely)
    sha256 = models.CharField(max_length=64, blank=True)
    run = models.ForeignKey("training.Run", null=True, blank=True, on_delete=models.CASCADE, related_name="artifacts")
    study = models.ForeignKey(
        "evaluation.Study", null=True, blank=True, on_delete=models.CASCADE, related_name="artifacts"
    )
    export = models.ForeignKey(
        "evaluation.ExportJob", null=True, blank=True, on_delete=models.CASCADE, related_name="artifacts"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=ArtifactKind.values), name="artifact_kind_valid"),
            models.CheckConstraint(
                condition=Q(uri__startswith="file:///") | Q(uri__startswith="s3://"), name="artifact_uri_scheme"
            ),
            models.CheckConstraint(condition=Q(size__gte=0), name="artifact_size_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.uri}"
