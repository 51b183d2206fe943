"""The worker's side of a sampling job: run the engine's sampler as a subprocess, relay its progress, stop it on
cancel, and make the study when it has written every completion.

Like a run's supervisor: the engine starts in a fresh interpreter and its own process group
(``python -m training.engine.sampling SPEC``), with the Django configuration removed from its environment.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from django.conf import settings

from loop.models import SampleJob, SampleJobPolicy
from loop.services import sampling


@dataclass
class WorkerSettings:
    """Timings of the relay loop; tests shorten them."""

    poll_s: float = 0.5
    progress_every_s: float = 0.5  # at most two progress writes a second
    heartbeat_s: float = 10.0
    cancel_grace_s: float = float(getattr(settings, "RUN_CANCEL_GRACE_S", 10))
    batch_size: int = 16
    num_threads: int = 0
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "training.engine.sampling"])


def write_spec(job: SampleJob, opts: WorkerSettings) -> str:
    """The sampler's spec for this job (policies in the job's order, keyed by policy id)."""
    folder = sampling.sample_set_dir(job.pk)
    folder.mkdir(parents=True, exist_ok=True)
    members = SampleJobPolicy.objects.filter(job=job).select_related("policy").order_by("position")
    s = job.sampling
    spec = {
        "models": [{"key": sampling.model_key(m.policy), "path": m.policy.model_path} for m in members],
        "prompts_path": str(folder / "prompts.jsonl"),
        "output_path": str(folder / "samples.jsonl"),
        "n": int(s.get("n", 1)),
        "temperature": float(s.get("temperature", 1.0)),
        "top_p": float(s.get("top_p", 1.0)),
        "max_new_tokens": int(s.get("max_new_tokens", 64)),
        "seed": int(s.get("seed", 0)),
        "backend": str(s.get("backend", "auto")),
        "batch_size": opts.batch_size,
        "num_threads": opts.num_threads,
    }
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return str(path)


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        env.pop(name, None)  # the engine needs none of the web tier's configuration
    env["CUDA_VISIBLE_DEVICES"] = str(getattr(settings, "ARBITER_GPU_SLOT", ""))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pump(stream: IO[str], out: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        out.put(line.rstrip("\n"))
    out.put(None)


def _tail(stream: IO[str], keep: collections.deque[str]) -> None:
    for line in iter(stream.readline, ""):
        keep.append(line.rstrip("\n"))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def run_sample_job(*, job: SampleJob, opts: WorkerSettings | None = None) -> SampleJob:
    """Sample a claimed job to the end (or its cancel), then make its study; return the job as it ends."""
    opts = opts or WorkerSettings()
    try:
        spec = write_spec(job, opts)
        proc = subprocess.Popen(
            [*opts.command, spec],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=engine_env(),
            cwd=str(settings.BASE_DIR),
            start_new_session=True,
        )
    except OSError as exc:
        sampling.fail_sample_job(job_id=job.pk, error=f"could not start the sampler: {exc}")
        return SampleJob.objects.get(pk=job.pk)
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True),
        threading.Thread(target=_tail, args=(proc.stderr, stderr_tail), daemon=True),
    ]
    for t in readers:
        t.start()
    summary: dict[str, object] | None = None
    done, written, last_write, last_beat = 0, -1, 0.0, time.monotonic()
    cancelled_at: float | None = None
    stdout_open = True
    while stdout_open or proc.poll() is None:
        try:
            line = lines.get(timeout=opts.poll_s)
        except queue.Empty:
            line = ""
        if line is None:
            stdout_open = False
        elif line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "progress":
                    done = min(int(event["done"]), job.total)
                elif event.get("event") == "done":
                    summary = event
        now = time.monotonic()
        if (done != written and now - last_write >= opts.progress_every_s) or now - last_beat >= opts.heartbeat_s:
            cancel = sampling.record_progress(job_id=job.pk, done=done)
            written, last_write, last_beat = done, now, now
            if cancel and cancelled_at is None:
                cancelled_at = now
                _signal_group(proc.pid, signal.SIGTERM)
        if cancelled_at is not None and proc.poll() is None and now - cancelled_at > opts.cancel_grace_s:
            _signal_group(proc.pid, signal.SIGKILL)
        if not stdout_open and proc.poll() is None:
            time.sleep(0.05)
    code = proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)  # stragglers the sampler left in its group
    for t in readers:
        t.join(timeout=5)
    if cancelled_at is not None:
        sampling.fail_sample_job(job_id=job.pk, error="cancelled while sampling", cancelled=True)
    elif code != 0 or summary is None:
        reason = "\n".join(stderr_tail) or f"the sampler exited with code {code}"
        sampling.fail_sample_job(job_id=job.pk, error=reason)
    else:
        try:
            return sampling.finish_sample_job(
                job_id=job.pk, backend=str(summary.get("backend", "")), seconds=float(str(summary.get("seconds", 0)))
            )
        except Exception as exc:
            sampling.fail_sample_job(job_id=job.pk, error=f"the completions could not become a study: {exc}")
            raise
    return SampleJob.objects.get(pk=job.pk)
