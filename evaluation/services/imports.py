"""Item imports: one service for the upload form, the studies API and the background task.

A file is read as a stream (evaluation.importers): parsed rows are staged (ImportRow) in short
transactions, a batch at a time, with the job's progress; then published into the study in one
transaction, or dropped. So memory stays bounded whatever the file's size, annotators keep working
while a large file is read (no long write lock, which SQLite would hold over the whole database),
the queue never sees half an import, and any bad row refuses the whole file unless the researcher
asked for the valid rows.

`import_items` runs inline and answers with a report (or raises ImportRejected); `start_import`
stores the upload and hands it to the Celery task `evaluation.run_import`; `submit_import` picks
one by size, so the form and the API behave alike.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from django.conf import settings
from django.db import connection
from django.db.models import F, Max
from django.utils import timezone

from arbiter.accounts.models import User
from evaluation import rendering
from evaluation.importers import (
    MAX_ERRORS,
    ContainerError,
    ParsedAttachment,
    ParsedItem,
    RowError,
    parse_upload,
)
from evaluation.models import AutomaticJudgment, ImportJob, ImportRow, ImportStatus, Item, Study, StudyKind
from evaluation.services.locking import write_transaction

BATCH = 5000
ImportSource = bytes | IO[bytes] | Path


class ImportRejected(Exception):
    """Nothing was imported: the file as a whole is unreadable (`message`), or some rows are invalid."""

    def __init__(self, errors: list[RowError], error_count: int, valid_count: int, message: str = "") -> None:
        super().__init__(message or f"{error_count} invalid rows")
        self.errors = errors
        self.error_count = error_count
        self.valid_count = valid_count
        self.message = message


@dataclass(frozen=True)
class ImportReport:
    created: int
    skipped_rows: list[RowError]
    skipped_count: int
    waiting: int = 0
    attached: int = 0
    verdicts: int = 0
    flagged: int = 0
    container: str = ""
    job_id: int | None = None

    @classmethod
    def of(cls, job: ImportJob) -> ImportReport:
        return cls(
            created=job.created_items,
            skipped_rows=errors_of(job),
            skipped_count=job.error_count,
            waiting=job.waiting_items,
            attached=job.attached,
            verdicts=job.verdicts,
            flagged=job.flagged_rows,
            container=job.container,
            job_id=job.pk,
        )


def errors_of(job: ImportJob) -> list[RowError]:
    return [RowError(e["line"], e["field"], e["message"]) for e in job.errors or []]


def import_in_background(size: int) -> bool:
    """Files past this size are read by a worker, with a progress bar, instead of inside the request."""
    return size > settings.EVALUATION_IMPORT_BACKGROUND_BYTES


def _new_job(
    *, study: Study, requested_by: User | None, filename: str, size: int, import_valid_rows: bool, flag: bool
) -> ImportJob:
    return ImportJob.objects.create(
        study=study,
        requested_by=requested_by or study.owner,
        filename=filename[:255],
        size_bytes=size,
        import_valid_rows=import_valid_rows,
        flag_unsplittable=flag,
        status=ImportStatus.RUNNING,
    )


def _size_of(data: ImportSource) -> int:
    if isinstance(data, bytes | bytearray):
        return len(data)
    if isinstance(data, Path):
        return data.stat().st_size
    size = getattr(data, "size", None)
    if isinstance(size, int):
        return size
    if data.seekable():
        here = data.tell()
        end = data.seek(0, 2)
        data.seek(here)
        return end - here
    return 0


def import_items(
    *,
    study: Study,
    data: ImportSource,
    filename: str = "",
    import_valid_rows: bool = False,
    flag_unsplittable: bool = False,
    requested_by: User | None = None,
) -> ImportReport:
    """Import an upload now. Raises ImportRejected (and stores nothing) when it is refused."""
    job = _new_job(
        study=study,
        requested_by=requested_by,
        filename=filename,
        size=_size_of(data),
        import_valid_rows=import_valid_rows,
        flag=flag_unsplittable,
    )
    if isinstance(data, Path):
        with data.open("rb") as stream:
            _run(job, stream)
    elif isinstance(data, bytes | bytearray):
        _run(job, io.BytesIO(data))
    else:
        _run(job, data)
    return _outcome(job)


def _outcome(job: ImportJob) -> ImportReport:
    if job.status == ImportStatus.REJECTED:
        raise ImportRejected(errors_of(job), job.error_count, job.rows_read - job.error_count, job.message)
    return ImportReport.of(job)


def upload_path(job: ImportJob) -> Path:
    """Where a background import's upload waits for the worker (removed when the import ends)."""
    suffix = "".join(Path(job.filename).suffixes[-2:])[:20] if job.filename else ""
    return Path(settings.ARTIFACT_ROOT) / "uploads" / f"study-{job.study_id}" / f"import-{job.pk}{suffix}"


def start_import(
    *,
    study: Study,
    data: ImportSource,
    filename: str = "",
    import_valid_rows: bool = False,
    flag_unsplittable: bool = False,
    requested_by: User | None = None,
) -> ImportJob:
    """Store the upload (streamed to disk) and queue it for a worker; the job reports its progress."""
    from evaluation import tasks  # tasks import this module

    job = _new_job(
        study=study,
        requested_by=requested_by,
        filename=filename,
        size=_size_of(data),
        import_valid_rows=import_valid_rows,
        flag=flag_unsplittable,
    )
    path = upload_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes | bytearray):
        path.write_bytes(data)
    elif isinstance(data, Path):
        shutil.copyfile(data, path)
    else:
        with path.open("wb") as out:
            shutil.copyfileobj(data, out, 1 << 20)
    job.path = str(path)
    job.status = ImportStatus.QUEUED
    job.save(update_fields=["path", "status"])
    tasks.run_import.delay_on_commit(job.pk)
    return job


def submit_import(
    *,
    study: Study,
    data: ImportSource,
    filename: str = "",
    import_valid_rows: bool = False,
    flag_unsplittable: bool = False,
    requested_by: User | None = None,
) -> ImportReport | ImportJob:
    """Small files now (a report, or ImportRejected); large ones in the background (the queued job)."""
    options: dict[str, Any] = {
        "study": study,
        "data": data,
        "filename": filename,
        "import_valid_rows": import_valid_rows,
        "flag_unsplittable": flag_unsplittable,
        "requested_by": requested_by,
    }
    if import_in_background(_size_of(data)):
        return start_import(**options)
    return import_items(**options)


def run_import(*, import_id: int) -> ImportJob | None:
    """The worker's side of `start_import`; None when another worker has the job (a redelivered message)."""
    if not ImportJob.objects.filter(pk=import_id, status=ImportStatus.QUEUED).update(status=ImportStatus.RUNNING):
        return None
    job = ImportJob.objects.select_related("study").get(pk=import_id)
    path = Path(job.path)
    try:
        with path.open("rb") as stream:
            _run(job, stream)
    except Exception as exc:
        _drop_staged(job)
        ImportJob.objects.filter(pk=job.pk).update(
            status=ImportStatus.FAILED, message=str(exc)[:2000], finished_at=timezone.now()
        )
        raise
    finally:
        path.unlink(missing_ok=True)
    return job


# --------------------------------------------------------------------------- reading and staging


@dataclass
class _Progress:
    seq: int = 0
    rows: int = 0
    valid: int = 0
    flagged: int = 0
    error_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, error: RowError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error.as_dict())


def _run(job: ImportJob, stream: IO[bytes]) -> None:
    study = job.study
    progress = _Progress()
    try:
        upload = parse_upload(stream, kind=study.kind, flag_unsplittable=job.flag_unsplittable)
        job.container = upload.container
        refuse = not job.import_valid_rows
        batch: list[ParsedItem | ParsedAttachment] = []
        for record in upload.records:
            progress.rows += 1
            if isinstance(record, RowError):
                progress.error(record)
            else:
                progress.valid += 1
                if isinstance(record, ParsedItem) and record.payload.get("flags"):
                    progress.flagged += 1
                # Once a refused import has a bad row nothing will be stored: only count what else is wrong.
                if not (refuse and progress.error_count):
                    batch.append(record)
            if len(batch) >= BATCH or progress.rows % BATCH == 0:
                _stage(job, batch, progress, upload.position())
                batch = []
        _stage(job, batch, progress, upload.position())
    except ContainerError as exc:
        _finish_rejected(job, progress, message=str(exc))
        return
    if progress.error_count and (not job.import_valid_rows or progress.valid == 0):
        _finish_rejected(job, progress)
        return
    if progress.valid == 0:
        _finish_rejected(job, progress, message="the file has no items")
        return
    _publish(job, progress)


def _stage(job: ImportJob, batch: list[ParsedItem | ParsedAttachment], progress: _Progress, position: int) -> None:
    kind, fmt = job.study.kind, job.study.text_format
    rows: list[tuple[Any, ...]] = []
    for record in batch:
        progress.seq += 1
        if isinstance(record, ParsedAttachment):
            payload = {
                "task_id": record.task_id,
                "agent": record.agent,
                "trajectory": record.trajectory,
                "verdict": record.verdict,
                "judge": record.judge,
                "categories": record.categories,
            }
            rows.append((progress.seq, record.line, True, payload, {}, False, None, "", False))
            continue
        rendered = rendering.render_item(kind=kind, payload=record.payload, text_format=fmt)
        rows.append(
            (
                progress.seq,
                record.line,
                False,
                record.payload,
                rendered,
                record.is_gold,
                record.expected,
                record.external_id[:200],
                record.waiting,
            )
        )
    with write_transaction():
        if connection.vendor == "postgresql":
            # Staged rows are disposable (a crash fails the import, which is then run again): no need to wait
            # for the WAL flush on each batch. The publish below commits durably.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
        if rows:
            _insert_staged(job.pk, rows)
        job.bytes_read, job.rows_read, job.error_count = position, progress.rows, progress.error_count
        job.errors, job.flagged_rows = progress.errors, progress.flagged
        job.save(update_fields=["bytes_read", "rows_read", "error_count", "errors", "flagged_rows", "container"])


_STAGE_COLUMNS = "job_id, seq, line, attachment, payload, rendered, is_gold, expected, external_id, waiting"


def _insert_staged(job_id: int, rows: list[tuple[Any, ...]]) -> None:
    table = ImportRow._meta.db_table
    if connection.vendor == "postgresql":
        # COPY: the fastest way in; JSON goes as text and PostgreSQL parses it into jsonb.
        with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({_STAGE_COLUMNS}) FROM STDIN") as copy:
            for seq, line, attachment, payload, rendered, gold, expected, external_id, waiting in rows:
                copy.write_row(
                    (
                        job_id,
                        seq,
                        line,
                        attachment,
                        orjson.dumps(payload).decode(),
                        orjson.dumps(rendered).decode(),
                        gold,
                        None if expected is None else orjson.dumps(expected).decode(),
                        external_id,
                        waiting,
                    )
                )
        return
    ImportRow.objects.bulk_create(
        [
            ImportRow(
                job_id=job_id,
                seq=seq,
                line=line,
                attachment=attachment,
                payload=payload,
                rendered=rendered,
                is_gold=gold,
                expected=expected,
                external_id=external_id,
                waiting=waiting,
            )
            for seq, line, attachment, payload, rendered, gold, expected, external_id, waiting in rows
        ],
        batch_size=500,
    )


def _drop_staged(job: ImportJob) -> None:
    with write_transaction():
        ImportRow.objects.filter(job=job).delete()


def _finish_rejected(job: ImportJob, progress: _Progress, *, message: str = "") -> None:
    _drop_staged(job)
    job.status = ImportStatus.REJECTED
    job.message = message
    job.rows_read, job.error_count, job.errors = progress.rows, progress.error_count, progress.errors
    if message and not progress.error_count:
        job.error_count = 1
        job.errors = [RowError(0, "", message).as_dict()]
    job.finished_at = timezone.now()
    job.save()


# --------------------------------------------------------------------------- publishing

_PUBLISH_SQL = f"""
INSERT INTO {Item._meta.db_table}
    (study_id, position, external_id, payload, rendered, is_gold, expected, waiting, overlap, claimed,
     judgment_count, created_at)
SELECT %(study)s, %(start)s + r.seq, r.external_id, r.payload, r.rendered, r.is_gold, r.expected, r.waiting,
       CASE WHEN r.waiting THEN 0 ELSE %(overlap)s END, 0, 0, %(now)s
FROM {ImportRow._meta.db_table} r
WHERE r.job_id = %(job)s AND NOT r.attachment
"""  # noqa: S608 - table names only


class _AttachFailed(Exception):
    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} attachments failed")
        self.errors = errors


def _publish(job: ImportJob, progress: _Progress) -> None:
    """Move the staged rows into the study in one transaction: items, then trajectories and verdicts."""
    try:
        with write_transaction():
            study = Study.objects.select_for_update().get(pk=job.study_id)
            if study.kind == StudyKind.VIOLATION:
                repeated = _repeated_tasks(job, study)
                if repeated and not job.import_valid_rows:
                    raise _AttachFailed(repeated)
                ImportRow.objects.filter(job=job, line__in=[e.line for e in repeated], attachment=False).delete()
                for error in repeated:
                    progress.error(error)
            start = Item.objects.filter(study=study).aggregate(m=Max("position"))["m"] or 0
            params = {"study": study.pk, "start": start, "overlap": study.overlap, "now": timezone.now(), "job": job.pk}
            with connection.cursor() as cursor:
                cursor.execute(_PUBLISH_SQL, params)
                created = max(cursor.rowcount, 0)
            waiting = ImportRow.objects.filter(job=job, attachment=False, waiting=True).count()
            Study.objects.filter(pk=study.pk).update(item_count=F("item_count") + created)
            job.study.item_count = study.item_count + created  # the caller's instance, as add_items does
            attached, verdicts, failures = _apply_attachments(job, study)
            if failures and not job.import_valid_rows:
                raise _AttachFailed(failures)
            ImportRow.objects.filter(job=job).delete()
            for failure in failures:
                progress.error(failure)
            job.status = ImportStatus.DONE
            job.created_items, job.waiting_items, job.attached, job.verdicts = created, waiting, attached, verdicts
            job.error_count, job.errors = progress.error_count, progress.errors
            job.finished_at = timezone.now()
            job.save()
    except _AttachFailed as exc:
        for failure in exc.errors:
            progress.error(failure)
        _finish_rejected(job, progress)
        return
    if created >= 1000 and connection.vendor == "postgresql":
        # Fresh statistics, or the queue's scan is planned for an empty table (a bitmap scan and a
        # sort of every open item, tens of ms, instead of walking the index to the first free one).
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Item._meta.db_table}")


def _repeated_tasks(job: ImportJob, study: Study) -> list[RowError]:
    """Task rows already in the study (the same task file uploaded twice), or twice in this file."""
    existing = set(Item.objects.filter(study=study).values_list("payload__task_id", "payload__agent"))
    known_tasks = {task for task, _ in existing}
    staged = ImportRow.objects.filter(job=job, attachment=False).order_by("seq")
    errors = []
    for line, task, agent in staged.values_list("line", "payload__task_id", "payload__agent").iterator(2000):
        if not task:
            continue
        # A task without a trajectory repeats any item of that task; a task with one, the same agent's.
        if (not agent and task in known_tasks) or (task, agent) in existing:
            who = f" for agent {agent!r}" if agent else ""
            errors.append(RowError(line, "task_id", f"task {task} is already in this study{who}"))
        existing.add((task, agent))
        known_tasks.add(task)
    return errors


def _apply_attachments(job: ImportJob, study: Study) -> tuple[int, int, list[RowError]]:
    staged = ImportRow.objects.filter(job=job, attachment=True).order_by("seq")
    attached = verdicts = 0
    failures: list[RowError] = []
    for row in staged.iterator(500):
        try:
            gave_trajectory, gave_verdict = attach(study=study, record=row.payload)
        except AttachmentRefused as exc:
            failures.append(RowError(row.line, exc.field, exc.message))
            continue
        attached += gave_trajectory
        verdicts += gave_verdict
    return attached, verdicts, failures


class AttachmentRefused(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


def _task_items(study: Study, task_id: str) -> list[Item]:
    return list(Item.objects.select_for_update().filter(study=study, payload__task_id=task_id).order_by("position"))


def attach(*, study: Study, record: dict[str, Any]) -> tuple[bool, bool]:
    """Give a task's item its trajectory and/or an automatic verdict; (trajectory given, verdict stored).

    The item is the one of this task and agent; else the task's item still waiting for its first
    trajectory; else a new item of the same task for this agent (a second agent's run).
    """
    if study.kind != StudyKind.VIOLATION:
        raise AttachmentRefused("task_id", "trajectories and automatic verdicts belong to violation studies")
    task_id, agent = record["task_id"], record["agent"]
    items = _task_items(study, task_id)
    if not items:
        raise AttachmentRefused(
            "task_id", f"task {task_id} is not in this study: upload its task (ST-WebAgentBench's test.raw.json) first"
        )
    item = next((i for i in items if i.payload.get("agent") == agent), None)
    if item is None:
        item = next((i for i in items if i.waiting and not i.payload.get("agent")), None)
    if item is None:
        template = items[0].payload
        payload = {k: template[k] for k in ("task_id", "intent", "policies", "sites") if k in template}
        payload.update(trajectory=[], agent=agent)
        start = Item.objects.filter(study=study).aggregate(m=Max("position"))["m"] or 0
        item = Item.objects.create(
            study=study, position=start + 1, external_id=str(task_id), payload=payload, waiting=True, overlap=0
        )
        Study.objects.filter(pk=study.pk).update(item_count=F("item_count") + 1)
    gave_trajectory = _give_trajectory(study, item, agent, record.get("trajectory"))
    verdict = record.get("verdict")
    if verdict is not None:
        _check_policies(item, record.get("categories"))
        steps = len(item.payload.get("trajectory") or [])
        for violation in verdict.get("violations", []):
            if violation.get("step") is not None and not 0 <= violation["step"] < steps:
                violation["step"] = None
        AutomaticJudgment.objects.update_or_create(
            item=item, judge=record["judge"], defaults={"study": study, "payload": verdict}
        )
    return gave_trajectory, verdict is not None


def _give_trajectory(study: Study, item: Item, agent: str, trajectory: list[dict[str, Any]] | None) -> bool:
    updates: dict[str, Any] = {}
    if item.payload.get("agent") != agent:
        updates["agent"] = agent
    if trajectory:
        current = item.payload.get("trajectory") or []
        if current and current != trajectory:
            raise AttachmentRefused(
                "trajectory", f"task {item.payload.get('task_id')} already has a trajectory from agent {agent!r}"
            )
        if not current:
            updates["trajectory"] = trajectory
    if not updates:
        return False
    item.payload = {**item.payload, **updates}
    item.rendered = rendering.render_item(kind=study.kind, payload=item.payload, text_format=study.text_format)
    fields = ["payload", "rendered"]
    if item.waiting and item.payload.get("trajectory"):
        item.waiting, item.overlap = False, study.overlap
        fields += ["waiting", "overlap"]
    item.save(update_fields=fields)
    return "trajectory" in updates


def _check_policies(item: Item, categories: Iterable[str] | None) -> None:
    if categories is None:
        return
    theirs = list(categories)
    ours = [p["policy_category"] for p in item.payload.get("policies", [])]
    task = item.payload.get("task_id")
    if len(theirs) != len(ours):
        raise AttachmentRefused(
            "policies", f"the verdict covers {len(theirs)} policies but task {task} has {len(ours)} in this study"
        )
    for i, (a, b) in enumerate(zip(theirs, ours, strict=True)):
        if a != b:
            raise AttachmentRefused(
                f"policies[{i}]", f"the verdict's policy {i + 1} is {a} but task {task}'s is {b} in this study"
            )
