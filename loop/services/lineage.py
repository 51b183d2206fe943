"""Lineage links: a run is tied to the reward-data export its config reads, so an export's runs can be listed
(and the export protected from deletion) and a run's data traced back to the study and judgments it came from."""

from __future__ import annotations

import contextlib
from pathlib import Path

from django.conf import settings
from django.db.models import Q

from artifacts import uris
from artifacts.services import canonical_uri
from evaluation.models import ExportJob, ExportStatus
from loop.models import RunInput
from training.models import Run

# Config fields that name a dataset file. Fields a recipe does not have are simply absent from its config.
INPUT_FIELDS = ("dataset_path", "eval_dataset_path")


def _candidates(value: str) -> list[str]:
    """The spellings of one file an export row may have stored (absolute, relative to ARTIFACT_ROOT, URI)."""
    out = {value}
    root = Path(settings.ARTIFACT_ROOT)
    if value.startswith("file://"):
        out.add(value.removeprefix("file://"))
    path = Path(value.removeprefix("file://"))
    if not path.is_absolute():
        out.add(str(root / path))
    else:
        with contextlib.suppress(ValueError):  # outside the artifact root: no relative spelling
            out.add(str(path.relative_to(root)))
        out.add(f"file://{path}")
    return sorted(out)


def export_for_path(*, value: str, user: object) -> ExportJob | None:
    """The finished export whose file `value` names, if `user` may see its study; else None.

    Besides the spellings a row may have stored, the value's canonical URI (symlinks and `.`/`//` resolved,
    as the launch check resolved it to let the run read the file) is matched against the export's artifact:
    a run launched on any accepted spelling of an export is linked to it, so the export cannot be deleted.
    """
    if not value:
        return None
    named = Q(path__in=_candidates(value))
    with contextlib.suppress(uris.BadUri):
        named |= Q(artifacts__uri=str(canonical_uri(value.strip())))
    qs = ExportJob.objects.filter(named, status=ExportStatus.DONE).select_related("study")
    if not getattr(user, "is_admin_role", False):
        qs = qs.filter(Q(study__owner=user) | Q(study__shared_with=user))
    return qs.order_by("-pk").first()


def link_run_inputs(*, run: Run) -> list[RunInput]:
    """Store which exports the run's config reads (called once, when the run row is created)."""
    links: list[RunInput] = []
    if run.is_external:
        # A script's run (POST /api/runs/) keeps its config as unchecked notes and reads nothing here: a PROTECT
        # link from it would let any reader of a study stop its owner from ever deleting the export.
        return links
    config = run.config if isinstance(run.config, dict) else {}
    for field in INPUT_FIELDS:
        value = config.get(field)
        if not isinstance(value, str) or not value:
            continue
        export = export_for_path(value=value, user=run.owner)
        if export is not None:
            link, _ = RunInput.objects.get_or_create(run=run, field=field, defaults={"export": export})
            links.append(link)
    return links
