"""The Celery worker's side of a run: start the engine subprocess, capture its output, beat, cancel, record the exit.

The engine is `python -m training.engine SPEC.json` in a new session (its own process group), so
cancel can signal the whole tree (dataloader workers, torchrun children) at once, and a fresh
interpreter (CUDA cannot live in a forked Celery child). If the worker itself dies, the engine's
next write to its stdout pipe fails (the reading end is gone) and the engine exits; the heartbeat
sweep marks the run lost. The watching (output pumps, beats, cancel with grace, stragglers) is the remote
worker's own loop, arbiter_worker.engine_watch (Django-free), given database callbacks here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from arbiter_worker.engine_watch import watch_engine
from artifacts import services as artifact_services
from artifacts.localize import localize, localize_config
from training.models import Run
from training.services import ingest, runs

logger = logging.getLogger(__name__)


@dataclass
class SupervisorSettings:
    """Timings of the watch loop; tests shorten them."""

    poll_s: float = 0.5  # log flush and cancel poll
    heartbeat_s: float = 5.0
    cancel_grace_s: float = float(getattr(settings, "RUN_CANCEL_GRACE_S", 10))
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "training.engine"])


def output_dir(run: Run) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "runs" / str(run.id)


def write_spec(run: Run) -> Path:
    """The engine's spec, with every artifact URI of its inputs resolved to a file on this worker."""
    out = output_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    store = artifact_services.default_store()
    cache = Path(settings.ARTIFACT_ROOT) / "cache"
    spec = {
        "run_id": run.id,
        "recipe": run.recipe,
        "config": localize_config(run.config, store=store, cache=cache),
        "output_dir": str(out),
        "resume_from": localize(run.resume_from, store=store, cache=cache) if run.resume_from else None,
        "seed": int(run.config.get("seed", 0) or 0),
    }
    if artifact_services.is_remote():
        # Checkpoints go to the bucket as they are written (by the engine: a killed worker loses none).
        spec["output_uri"] = str(artifact_services.run_uri(run_id=run.id))
    path = out / "spec.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def engine_env(*, run: Run, token: str) -> dict[str, str]:
    env = dict(os.environ)
    # Django's and the worker's own configuration must not leak into the engine.
    for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        env.pop(name, None)
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": str(getattr(settings, "ARBITER_GPU_SLOT", "")),
            "ARBITER_API_URL": settings.ARBITER_PUBLIC_URL,
            "ARBITER_RUN_ID": str(run.id),
            "ARBITER_RUN_TOKEN": token,
            # The engine uploads checkpoints itself when the store is a bucket (credentials: AWS_* as inherited).
            "ARTIFACT_S3_ENDPOINT_URL": str(getattr(settings, "ARTIFACT_S3_ENDPOINT_URL", "") or ""),
            "PYTHONUNBUFFERED": "1",  # lines reach the log as they are printed
            # The engine runs in its run's own folder (see run_engine), so the code comes from PYTHONPATH.
            "PYTHONPATH": os.pathsep.join(p for p in (str(settings.BASE_DIR), os.environ.get("PYTHONPATH", "")) if p),
        }
    )
    return env


class LogCollector:
    """Numbers each stream's lines (the idempotency key) and writes them in batches."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.next_seq = {"stdout": 0, "stderr": 0}
        self.pending: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def add(self, stream: str, text: str) -> None:
        self.pending[stream].append(text)

    def flush(self) -> None:
        for stream, texts in self.pending.items():
            if not texts:
                continue
            batch = ingest.lines_batch(stream=stream, first_seq=self.next_seq[stream], texts=texts)
            try:
                ingest.record_logs(run_id=self.run_id, batch=batch)
            except Exception:  # the database blinked: keep the lines and try again next poll
                logger.warning("run %s: could not store %d log lines", self.run_id, len(texts), exc_info=True)
                return
            self.next_seq[stream] += len(texts)
            self.pending[stream] = []


def run_engine(*, run: Run, token: str, opts: SupervisorSettings | None = None) -> Run | None:
    """Start the engine for a claimed run and watch it until it exits; return the finished run."""
    opts = opts or SupervisorSettings()
    logs = LogCollector(run.id)
    try:
        spec = write_spec(run)
        proc = subprocess.Popen(
            [*opts.command, str(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=engine_env(run=run, token=token),
            # The run's own folder, not the code's: a hub-style model id ("org/name") must never name a
            # folder that happens to sit in the working directory (the launch check allows hub ids as such).
            cwd=str(spec.parent),
            start_new_session=True,
        )
    except Exception as exc:  # an input that would not download, a spawn that failed: the run fails, saying why
        logs.add("stderr", f"[arbiter] could not start the engine: {exc}")
        logs.flush()
        return runs.finish_run(run_id=run.id, exit_code=None, note=f"could not start the engine: {exc}"[:300])
    runs.record_process(run_id=run.id, pid=proc.pid, pgid=proc.pid)  # start_new_session: it leads its group
    watched = watch_engine(
        proc,
        add_line=logs.add,
        flush=logs.flush,
        heartbeat=lambda: runs.heartbeat(run_id=run.id),
        cancel_requested=lambda: _cancel_requested(run.id),
        poll_s=opts.poll_s,
        heartbeat_s=opts.heartbeat_s,
        grace_s=opts.cancel_grace_s,
    )
    exit_code = watched.exit_code
    return runs.finish_run(
        run_id=run.id, exit_code=exit_code, cancelled=watched.cancelled, note=f"exit code {exit_code}"
    )


def _cancel_requested(run_id: int) -> bool:
    return Run.objects.filter(id=run_id, cancel_requested_at__isnull=False).exists()
