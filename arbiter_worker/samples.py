"""A "Sample into a study" job on this worker: the engine's sampler on one slot, progress and the completions
through the worker API and the artifact store (the web tier turns them into the study)."""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from arbiter_worker.client import Api, Refused
from arbiter_worker.config import WorkerConfig
from arbiter_worker.engine_watch import signal_group
from arbiter_worker.slots import SlotPool
from arbiter_worker.supervisor import HandBack, _die_with_parent, _engine_env, _store
from artifacts import uris
from artifacts.localize import localize


def supervise_sample(
    *, cfg: WorkerConfig, pool: SlotPool, job_id: int, poll_s: float = 0.5, grace_s: float = 10
) -> str:
    api = Api(cfg.api_url, cfg.token)
    with pool.mutex:
        if pool.free() < 1:
            raise HandBack("no free slot")
        try:
            spec = api.post(f"/api/worker/samples/{job_id}/claim/", {})
        except Refused:
            return ""  # not queued any more
        held = pool.acquire(1)
    if held is None:
        _finish(api, job_id, ok=False, error="GPU slot taken meanwhile")
        return "failed"
    work = cfg.root / "samples" / f"job-{job_id}"
    try:
        return _sample(cfg=cfg, api=api, spec=spec, slots=held, work=work, poll_s=poll_s, grace_s=grace_s)
    finally:
        pool.release(held)
        shutil.rmtree(work, ignore_errors=True)


def _finish(api: Api, job_id: int, **body: Any) -> str:
    return str(api.post(f"/api/worker/samples/{job_id}/finish/", body).get("status", ""))


def _sample(
    *, cfg: WorkerConfig, api: Api, spec: dict[str, Any], slots: list[str], work: Path, poll_s: float, grace_s: float
) -> str:
    job_id = int(spec["job_id"])
    store = _store(spec["store_url"])
    output = uris.parse(spec["output_uri"])
    try:
        work.mkdir(parents=True, exist_ok=True)
        cache = cfg.root / "cache"
        local_out = work / "samples.jsonl" if output.scheme == "s3" else output.local_path
        sampler_spec = {
            "models": [
                {"key": m["key"], "path": localize(m["path"], store=store, cache=cache)} for m in spec["models"]
            ],
            "prompts_path": localize(spec["prompts_uri"], store=store, cache=work / "in"),
            "output_path": str(local_out),
            **{k: spec[k] for k in ("n", "temperature", "top_p", "max_new_tokens", "seed", "backend")},
            "batch_size": 16,
            "num_threads": 0,
        }
        path = work / "spec.json"
        path.write_text(json.dumps(sampler_spec, indent=2), encoding="utf-8")
        env = _engine_env(cfg, {"run_id": "", "token": ""}, slots)
        for name in ("ARBITER_RUN_ID", "ARBITER_RUN_TOKEN"):
            env.pop(name, None)
        proc = subprocess.Popen(
            [cfg.python or sys.executable, "-m", "training.engine.sampling", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(work),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    except Exception as exc:
        return _finish(api, job_id, ok=False, error=f"could not start the sampler: {exc}")
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def pump() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def keep() -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, ""):
            tail.append(line.rstrip("\n"))

    for target in (pump, keep):
        threading.Thread(target=target, daemon=True).start()
    summary: dict[str, Any] | None = None
    done, sent, last = 0, -1, 0.0
    cancelled_at: float | None = None
    stdout_open = True
    while stdout_open or proc.poll() is None:
        try:
            line = lines.get(timeout=poll_s)
        except queue.Empty:
            line = ""
        if line is None:
            stdout_open = False
        elif line.startswith("{"):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(line)
                if event.get("event") == "progress":
                    done = int(event["done"])
                elif event.get("event") == "done":
                    summary = event
        now = time.monotonic()
        if (done != sent and now - last >= 0.5) or now - last >= 5:
            try:
                cancel = bool(api.post(f"/api/worker/samples/{job_id}/progress/", {"done": done}).get("cancel"))
            except (ConnectionError, Refused):
                cancel = False
            sent, last = done, now
            if cancel and cancelled_at is None:
                cancelled_at = now
                signal_group(proc.pid, signal.SIGTERM)
        if cancelled_at is not None and proc.poll() is None and now - cancelled_at > grace_s:
            signal_group(proc.pid, signal.SIGKILL)
        if not stdout_open and proc.poll() is None:
            time.sleep(0.05)
    code = proc.wait()
    signal_group(proc.pid, signal.SIGKILL)
    if cancelled_at is not None:
        return _finish(api, job_id, cancelled=True)
    if code != 0 or summary is None:
        return _finish(api, job_id, ok=False, error="\n".join(tail) or f"the sampler exited with code {code}")
    if output.scheme == "s3" and store is not None:
        store.put_file(local_out, output)
    return _finish(
        api, job_id, ok=True, backend=str(summary.get("backend", "")), seconds=float(summary.get("seconds", 0) or 0)
    )
