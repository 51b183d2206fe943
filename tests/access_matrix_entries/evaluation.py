"""Access entries for the evaluation app's URLs (studies, annotator queue, API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from arbiter.accounts.models import Role, User
from tests.access_matrix_entries import ANNOTATORS, RESEARCHERS, Access


def _study(owner: Any) -> Any:
    """A pairwise study of the owner's, with one item, that every annotator in the database is assigned to."""
    from evaluation import services
    from evaluation.importers import parse_all

    study = services.create_study(owner=owner, name="matrix", kind="pairwise", overlap=2)
    row = b'{"prompt": "p", "response_a": "a", "response_b": "b"}'
    services.add_items(study=study, items=parse_all(row, kind="pairwise").items)
    study.annotators.set(User.objects.filter(role=Role.ANNOTATOR))
    return study


def study(owner: Any) -> dict[str, Any]:
    return {"study_id": _study(owner).pk}


def item(owner: Any) -> dict[str, Any]:
    s = _study(owner)
    return {"study_id": s.pk, "item_id": s.items.get().pk}


def judged_item(owner: Any) -> dict[str, Any]:
    """An item with a judgment: deleting it is refused (409) for whoever gets in, so every role meets the same
    object (a successful delete would leave the next role a 404)."""
    from evaluation import services

    s = _study(owner)
    annotator = s.annotators.first() or User.objects.create(username="matrix-annotator", role=Role.ANNOTATOR)
    s.annotators.add(annotator)
    assignment = services.next_assignment(annotator=annotator, study=s)
    services.submit_judgment(annotator=annotator, assignment_id=assignment.pk, data={"choice": "left"})
    return {"study_id": s.pk, "item_id": assignment.item_id}


def import_job(owner: Any) -> dict[str, Any]:
    from evaluation.models import ImportJob

    s = _study(owner)
    job = ImportJob.objects.create(study=s, requested_by=owner, filename="items.jsonl", status="done")
    return {"study_id": s.pk, "import_id": job.pk}


def export(owner: Any) -> dict[str, Any]:
    from evaluation.models import ExportJob, ExportStatus

    s = _study(owner)
    folder = Path(settings.ARTIFACT_ROOT) / "exports" / f"study-{s.pk}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "matrix.jsonl"
    path.write_text("{}\n")
    job = ExportJob.objects.create(
        study=s, requested_by=owner, format="judgments_jsonl", status=ExportStatus.DONE, path=str(path), rows=1
    )
    return {"study_id": s.pk, "export_id": job.pk}


def used_export(owner: Any) -> dict[str, Any]:
    """A finished export that a run trained on: deleting it is refused (409) for everyone let in."""
    from training.models import Run

    kwargs = export(owner)
    from evaluation.models import ExportJob

    job = ExportJob.objects.get(pk=kwargs["export_id"])
    Run.objects.create(owner=owner, name="matrix", recipe="dpo", config={"dataset_path": job.path}, status="succeeded")
    return kwargs


ENTRIES = {
    "evaluation:study_list": Access(roles=RESEARCHERS),
    "evaluation:study_create": Access(roles=RESEARCHERS),
    "evaluation:study_detail": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:study_edit": Access(roles=RESEARCHERS, objects="study"),
    # Rename/tag, archive, delete: the owner or an admin (a reader it is shared with gets 403, anyone else 404).
    "evaluation:study_labels": Access(roles=RESEARCHERS, objects="study", method="post"),
    "evaluation:study_archive": Access(roles=RESEARCHERS, objects="study", method="post"),
    "evaluation:study_delete": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:items_upload": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:import_status": Access(roles=RESEARCHERS, objects="import_job"),
    "evaluation:item_list": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:items_example": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:item_detail": Access(roles=RESEARCHERS, objects="item"),
    "evaluation:item_edit": Access(roles=RESEARCHERS, objects="item"),
    "evaluation:item_delete": Access(roles=RESEARCHERS, objects="judged_item", method="post"),
    "evaluation:item_create": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:quality": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:results": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:export": Access(roles=RESEARCHERS, objects="study"),
    "evaluation:export_status": Access(roles=RESEARCHERS, objects="export"),
    "evaluation:export_download": Access(roles=RESEARCHERS, objects="export"),
    # Only the owner (and admins) delete; a shared study's reader is refused (403), others get 404.
    "evaluation:export_delete": Access(roles=RESEARCHERS, objects="used_export", method="post"),
    # The studies API (user API keys, tested in tests/evaluation/test_api.py; here the browser's session).
    "evaluation_api:studies": Access(roles=RESEARCHERS),
    "evaluation_api:study": Access(roles=RESEARCHERS, objects="study"),
    "evaluation_api:items": Access(roles=RESEARCHERS, objects="study"),
    "evaluation_api:import_status": Access(roles=RESEARCHERS, objects="import_job"),
    "evaluation_api:annotators": Access(roles=RESEARCHERS, objects="study"),
    "evaluation_api:progress": Access(roles=RESEARCHERS, objects="study"),
    "evaluation_api:results": Access(roles=RESEARCHERS, objects="study"),
    "evaluation_api:exports": Access(roles=RESEARCHERS, objects="study"),
    "evaluation_api:export_status": Access(roles=RESEARCHERS, objects="export"),
    "evaluation_api:export_download": Access(roles=RESEARCHERS, objects="export"),
    "annotate:queue": Access(roles=ANNOTATORS),
    "annotate:next": Access(roles=ANNOTATORS, objects="study"),
    "annotate:submit": Access(roles=ANNOTATORS, objects="study", method="post"),
    "annotate:skip": Access(roles=ANNOTATORS, objects="study", method="post"),
}
BUILDERS: dict[str, Any] = {
    "study": study,
    "export": export,
    "import_job": import_job,
    "item": item,
    "judged_item": judged_item,
    "used_export": used_export,
}
