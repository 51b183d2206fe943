"""Exports: judgments as JSONL / CSV, and reward data as a versioned dataset a recipe can train on.

Reward rows per study kind:
  pairwise  {prompt, chosen, rejected}  one per judgment; ties dropped, or kept with the
            file's A as chosen when the researcher asks (DPO and reward-model recipes read these).
            In TRL's preference formats (huggingface.co/docs/trl/dataset_formats), by the job's style:
            conversational (prompt = turns, chosen/rejected = [assistant turn]) or standard strings
            (prompt ending "\n\nAssistant:", completions with their leading space), so for an HH row
            prompt + chosen is the original transcript byte for byte (evaluation.conversations)
  rubric    {prompt, response, score, rubric, satisfied}  one per plan: score = pass rate of its verdicts
  violation {prompt, trajectory, penalty, violations, completion, cup, step_labels}  one per trajectory
            (annotator majority); step_labels[k] = share of annotators who marked step k as violating a policy
            (a process reward model's per-step label)
  rating    {prompt, response, score}  one per item: mean rating scaled to [0, 1]
A job is claimed by one conditional UPDATE, so a redelivered task does nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, ProtectedError
from django.utils import timezone

from arbiter.accounts.models import User
from arbiter.csv_cells import safe_row
from artifacts import services as artifact_services
from artifacts.models import ArtifactKind
from artifacts.services import canonical_uri, register_artifact
from evaluation import conversations
from evaluation.judgments import violated_policies
from evaluation.models import ExportFormat, ExportJob, ExportStatus, Item, Judgment, RewardStyle, Study, StudyKind

CHUNK = 2000
ProgressFn = Callable[[int], None]


# --------------------------------------------------------------------------- rows


RECORD_FIELDS = (
    "id", "item_id", "item__external_id", "item__is_gold", "annotator__username",
    "assignment__swapped", "payload", "time_ms", "created_at",
)  # fmt: skip


def judgment_records(study: Study) -> Iterator[dict[str, Any]]:
    rows = (
        Judgment.objects.filter(study=study)
        .order_by("id")
        .values_list(
            "id",
            "item_id",
            "item__external_id",
            "item__is_gold",
            "annotator__username",
            "assignment__swapped",
            "payload",
            "time_ms",
            "created_at",
        )
    )
    for jid, item_id, external_id, is_gold, annotator, swapped, payload, time_ms, created in rows.iterator(CHUNK):
        yield {
            "judgment_id": jid,
            "study_id": study.pk,
            "kind": study.kind,
            "item_id": item_id,
            "external_id": external_id,
            "is_gold": is_gold,
            "annotator": annotator,
            "swapped": swapped,
            "time_ms": time_ms,
            "created_at": created.isoformat(),
            "judgment": payload,
        }


CSV_FIELDS = [
    "judgment_id", "study_id", "kind", "item_id", "external_id", "is_gold", "annotator", "swapped",
    "time_ms", "created_at", "verdict", "judgment",
]  # fmt: skip


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    payload = record["judgment"]
    verdict = payload.get("choice", payload.get("rating", payload.get("completion", payload.get("preference", ""))))
    # Annotator names, item ids and rationales are user text: none may reach a spreadsheet as a formula.
    return safe_row({**record, "verdict": verdict, "judgment": orjson.dumps(payload).decode()})


def reward_rows(study: Study, *, keep_ties: bool = False, style: str = RewardStyle.AUTO) -> Iterator[dict[str, Any]]:
    if study.kind == StudyKind.PAIRWISE:
        yield from _pairwise_rows(study, keep_ties, style)
        return
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item_id, payload in Judgment.objects.filter(study=study).values_list("item_id", "payload").iterator(CHUNK):
        by_item[item_id].append(payload)
    items = Item.objects.filter(study=study, pk__in=list(by_item)).order_by("position", "id")
    scale = len(study.scale)
    for item in items.iterator(CHUNK):
        verdicts = by_item[item.pk]
        if study.kind == StudyKind.RUBRIC:
            yield from _rubric_rows(item.payload, verdicts)
        elif study.kind == StudyKind.VIOLATION:
            yield _violation_row(item.payload, verdicts)
        else:
            mean = sum(v["rating"] for v in verdicts) / len(verdicts)
            score = (mean - 1) / (scale - 1) if scale > 1 else 0.0
            yield {"prompt": item.payload["prompt"], "response": item.payload["response"], "score": round(score, 4)}


def resolved_style(study: Study, style: str) -> str:
    """ "auto": conversational when any item of the study is a conversation (turns), else standard strings."""
    if style != RewardStyle.AUTO:
        return style
    conversation = Item.objects.filter(study=study, payload__source__in=["hh", "messages"]).exists()
    return RewardStyle.CONVERSATIONAL if conversation else RewardStyle.STANDARD


def _pairwise_rows(study: Study, keep_ties: bool, style: str) -> Iterator[dict[str, Any]]:
    rows = Judgment.objects.filter(study=study).order_by("id").values_list("payload__choice", "item__payload")
    style = resolved_style(study, style)
    split: Callable[[dict[str, Any]], tuple[Any, Any, Any]] = (
        conversations.standard_strings if style == RewardStyle.STANDARD else conversations.conversational
    )
    for choice, item in rows.iterator(CHUNK):
        if choice == "tie" and not keep_ties:
            continue
        prompt, a, b = split(item)
        chosen, rejected = (b, a) if choice == "b" else (a, b)
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _rubric_rows(item: dict[str, Any], verdicts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p, plan in enumerate(item["plans"]):
        satisfied = []
        for i in range(len(item["rubric"])):
            votes = [v["verdicts"][p][i] for v in verdicts if v["verdicts"][p][i] != "unclear"]
            satisfied.append(round(sum(x == "satisfied" for x in votes) / len(votes), 4) if votes else None)
        judged = [s for s in satisfied if s is not None]
        yield {
            "prompt": item["goal"],
            "response": plan["text"],
            "score": round(sum(judged) / len(judged), 4) if judged else None,
            "rubric": item["rubric"],
            "satisfied": satisfied,
        }


def _violation_row(item: dict[str, Any], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(verdicts)
    counts: dict[int, int] = defaultdict(int)
    for v in verdicts:
        for p in violated_policies(v):
            counts[p] += 1
    violated = sorted(p for p, c in counts.items() if c * 2 >= n)  # ties count as violations, as in results
    per_dimension: dict[str, int] = defaultdict(int)
    for p in violated:
        per_dimension[item["policies"][p]["policy_category"]] += 1
    full = sum(v["completion"] == "full" for v in verdicts) * 2 > n
    completion = 1.0 if full else round(sum(v["fraction"] for v in verdicts) / n, 4)
    return {
        "prompt": item["intent"],
        "trajectory": item["trajectory"],
        "penalty": len(violated),
        "violations": dict(per_dimension),
        "completion": completion,
        "cup": int(full and not violated),
        "step_labels": [
            round(sum(any(x["step"] == k for x in v.get("violations", [])) for v in verdicts) / n, 4)
            for k in range(len(item["trajectory"]))
        ],
    }


# --------------------------------------------------------------------------- jobs


def start_export(
    *,
    study: Study,
    requested_by: User,
    format: str,
    keep_ties: bool = False,
    style: str = RewardStyle.AUTO,
) -> ExportJob:
    from evaluation import tasks  # tasks import this module

    if style not in RewardStyle.values:
        raise ValueError(f"unknown reward style {style!r}")
    job = ExportJob.objects.create(
        study=study, requested_by=requested_by, format=format, keep_ties=keep_ties, style=style
    )
    tasks.run_export.delay_on_commit(job.pk)
    return job


def _claim(export_id: int) -> ExportJob | None:
    with transaction.atomic():
        claimed = ExportJob.objects.filter(pk=export_id, status=ExportStatus.QUEUED).update(status=ExportStatus.RUNNING)
        if claimed != 1:
            return None
        job = ExportJob.objects.select_related("study").get(pk=export_id)
        job.total = Judgment.objects.filter(study=job.study).count()
        if job.format == ExportFormat.REWARD:
            # Versions count per study; the study row lock orders two exports finishing at once.
            Study.objects.select_for_update().get(pk=job.study_id)
            last = ExportJob.objects.filter(study=job.study, format=ExportFormat.REWARD).aggregate(m=Max("version"))
            job.version = (last["m"] or 0) + 1
        job.save(update_fields=["total", "version"])
    return job


def run_export(*, export_id: int) -> ExportJob | None:
    """Write the export's file, updating `done` as it goes. None when another worker has it."""
    job = _claim(export_id)
    if job is None:
        return None
    try:
        path, rows, sha256 = _write(job)
        size = path.stat().st_size
        stored_path = _publish(job, path)
    except Exception as exc:
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        raise
    job.path, job.rows, job.done, job.status = stored_path, rows, job.total, ExportStatus.DONE
    job.sha256, job.finished_at = sha256, timezone.now()
    with transaction.atomic():
        job.save(update_fields=["path", "rows", "done", "status", "sha256", "finished_at"])
        # The export is an artifact of its study: readable by whoever may read the study, nobody else.
        register_artifact(
            owner=job.study.owner,
            kind=ArtifactKind.DATASET if job.format == ExportFormat.REWARD else ArtifactKind.EXPORT,
            uri=str(canonical_uri(stored_path)),
            size=size,
            sha256=sha256,
            study=job.study,
            export=job,
        )
    return job


def delete_export(*, job: ExportJob) -> None:
    """Delete an export and its file(s). Refused, naming the runs, when a run trained on it.

    The refusal is the database's: the link from a run to the export it trained on (loop.RunInput) is a
    PROTECT foreign key, so no path (this one, the admin, a study's deletion) can remove a used export.
    """
    if job.status in {ExportStatus.QUEUED, ExportStatus.RUNNING}:
        raise ValidationError("This export is still being written; delete it once it has finished.")
    label = f"v{job.version}" if job.version else f"#{job.pk}"
    try:
        with transaction.atomic():
            job.delete()
    except ProtectedError as exc:
        run_ids = sorted({int(r) for r in (getattr(o, "run_id", None) for o in exc.protected_objects) if r})
        runs = ", ".join(f"#{r}" for r in run_ids)
        raise ValidationError(
            f"Export {label} cannot be deleted: run {runs} trained on it, and lineage keeps the data a run "
            "learned from. Delete those runs first."
        ) from None
    _remove_files(job)


def _publish(job: ExportJob, path: Path) -> str:
    """Put the written export into the artifact store; the name its row keeps (local path or s3:// URI)."""
    if job.format == ExportFormat.REWARD:
        name, _ = artifact_services.publish(path.parent)  # the version folder: data and manifest together
        return str(path) if name == str(path.parent) else f"{name}/{path.name}"
    name, _ = artifact_services.publish(path)
    return name


def _remove_files(job: ExportJob) -> None:
    if not job.path:
        return
    if job.path.startswith("s3://"):
        folder = job.path.rsplit("/", 1)[0]
        artifact_services.remove(folder if job.format == ExportFormat.REWARD else job.path)
        return
    root = Path(settings.ARTIFACT_ROOT).resolve()
    path = Path(job.path).resolve()
    if root not in path.parents:
        return  # never delete outside the artifact root, whatever the row says
    # A reward export's version folder holds its file and manifest; judgment exports are single files.
    target = path.parent if job.format == ExportFormat.REWARD and path.parent.name == f"v{job.version}" else path
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


def export_dir(job: ExportJob) -> Path:
    root = Path(settings.ARTIFACT_ROOT)
    if job.format == ExportFormat.REWARD:
        return root / "datasets" / f"study-{job.study_id}" / f"v{job.version}"
    return root / "exports" / f"study-{job.study_id}"


def _write(job: ExportJob) -> tuple[Path, int, str]:
    """Write the job's file; its path, row count and SHA-256."""
    folder = export_dir(job)
    folder.mkdir(parents=True, exist_ok=True)
    study = job.study
    seen = 0

    def tick() -> None:
        nonlocal seen
        seen += 1
        if seen % CHUNK == 0:
            ExportJob.objects.filter(pk=job.pk).update(done=min(seen, job.total))

    rows = 0
    if job.format == ExportFormat.JUDGMENTS_CSV:
        path = folder / f"judgments-{job.pk}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for record in judgment_records(study):
                writer.writerow(_csv_row(record))
                rows += 1
                tick()
        return path, rows, _file_sha256(path)
    if job.format == ExportFormat.JUDGMENTS_JSONL:
        path = folder / f"judgments-{job.pk}.jsonl"
        source: Iterator[dict[str, Any]] = judgment_records(study)
    else:
        path = folder / "train.jsonl"
        source = reward_rows(study, keep_ties=job.keep_ties, style=job.style)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for record in source:
            line = orjson.dumps(record) + b"\n"
            out.write(line)
            digest.update(line)
            rows += 1
            tick()
    if job.format == ExportFormat.REWARD:
        manifest = {
            "study_id": study.pk,
            "study": study.name,
            "kind": study.kind,
            "version": job.version,
            "rows": rows,
            "keep_ties": job.keep_ties,
            "style": resolved_style(study, job.style),
            "sha256": digest.hexdigest(),
            "created_at": timezone.now().isoformat(),
            "columns": _columns(study.kind),
        }
        (folder / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return path, rows, digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _columns(kind: str) -> list[str]:
    return {
        StudyKind.PAIRWISE: ["prompt", "chosen", "rejected"],
        StudyKind.RUBRIC: ["prompt", "response", "score", "rubric", "satisfied"],
        StudyKind.VIOLATION: ["prompt", "trajectory", "penalty", "violations", "completion", "cup", "step_labels"],
        StudyKind.RATING: ["prompt", "response", "score"],
    }[StudyKind(kind)]
